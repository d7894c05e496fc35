//! Which burn device runs the model.

use std::fmt;

use burn::tensor::{Device, DeviceError, FloatDType};
use serde::{Deserialize, Serialize};

use super::{ModelError, Precision};

/// The configured choice (`detector.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// wgpu when a real GPU adapter exists, else cpu.
    #[default]
    Auto,
    /// burn-wgpu: a GPU, or Mesa lavapipe (software Vulkan) where there is none.
    Wgpu,
    /// burn's flex CPU backend.
    Cpu,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::Wgpu => "wgpu",
            Backend::Cpu => "cpu",
        })
    }
}

/// A backend after `auto` has been settled, with the device to run on.
#[derive(Debug, Clone)]
pub struct ResolvedBackend {
    pub backend: Backend,
    /// Human-readable description (adapter name for wgpu).
    pub description: String,
    pub device: Device,
    /// The float type the device's tensors default to (`model.precision`).
    pub precision: Precision,
}

/// Settles `backend` into a device whose float tensors default to `precision`.
pub(super) fn resolve(backend: Backend, precision: Precision) -> Result<ResolvedBackend, ModelError> {
    let mut resolved = resolve_device(backend)?;
    // f32 is the CPU backend's only float type; on wgpu it is set too, so that a device
    // an earlier model set to f16 is refused rather than silently reused.
    if resolved.backend != Backend::Cpu || precision != Precision::F32 {
        set_precision(&mut resolved, precision)?;
    }
    Ok(resolved)
}

/// The device's default float type is process-wide and locks at its first tensor, so a
/// second model on the same device can only share the first one's precision.
fn set_precision(resolved: &mut ResolvedBackend, precision: Precision) -> Result<(), ModelError> {
    let unavailable =
        |reason: String| ModelError::PrecisionUnavailable { precision, backend: resolved.description.clone(), reason };
    if resolved.backend == Backend::Cpu {
        return Err(unavailable(
            "the CPU kernels compute in f32; run on a GPU with --backend wgpu, or set model.precision = \"f32\"".into(),
        ));
    }
    let dtype = match precision {
        Precision::F32 => FloatDType::F32,
        Precision::F16 => FloatDType::F16,
    };
    match resolved.device.configure(dtype) {
        Ok(()) => {}
        Err(DeviceError::AlreadyInitialized { .. }) if resolved.device.settings().float_dtype == dtype => {}
        Err(DeviceError::AlreadyInitialized { .. }) => {
            return Err(unavailable(format!(
                "this process already runs a model at {:?} on this device, and a device has one default float type",
                resolved.device.settings().float_dtype
            )))
        }
        Err(e @ DeviceError::UnsupportedDType { .. }) => {
            return Err(unavailable(format!(
                "{e}: the adapter offers no 16-bit floats in shaders (wgpu's SHADER_F16); set model.precision = \"f32\""
            )))
        }
    }
    resolved.precision = precision;
    if precision != Precision::F32 {
        resolved.description.push_str(&format!(", {precision}"));
    }
    Ok(())
}

/// `auto` takes wgpu only when a real GPU adapter is present; `wgpu` falls back to a CPU
/// (lavapipe) adapter when no GPU exists.
fn resolve_device(backend: Backend) -> Result<ResolvedBackend, ModelError> {
    use burn::tensor::DeviceKind;
    let cpu = || ResolvedBackend {
        backend: Backend::Cpu,
        description: "cpu (burn flex)".into(),
        device: Device::flex(),
        precision: Precision::F32,
    };
    match backend {
        Backend::Cpu => Ok(cpu()),
        Backend::Auto => Ok(match best_adapter() {
            Some(adapter) if adapter.is_gpu => wgpu_backend(DeviceKind::DefaultDevice, &adapter),
            _ => cpu(),
        }),
        Backend::Wgpu => match best_adapter() {
            Some(adapter) if adapter.is_gpu => Ok(wgpu_backend(DeviceKind::DefaultDevice, &adapter)),
            Some(adapter) => Ok(wgpu_backend(DeviceKind::Cpu, &adapter)),
            None => Err(ModelError::BackendUnavailable {
                backend: "wgpu".into(),
                reason: "no Vulkan/Metal/DX12 adapter found; install a GPU driver, or Mesa's software Vulkan \
                         driver (Debian: `apt-get install mesa-vulkan-drivers libvulkan1`), or use --backend cpu"
                    .into(),
            }),
        },
    }
}

fn wgpu_backend(kind: burn::tensor::DeviceKind, adapter: &Adapter) -> ResolvedBackend {
    ResolvedBackend {
        backend: Backend::Wgpu,
        description: format!("wgpu ({})", adapter.name),
        device: Device::wgpu(kind),
        precision: Precision::F32,
    }
}

struct Adapter {
    name: String,
    is_gpu: bool,
}

/// The most capable adapter wgpu can see, GPUs first.
fn best_adapter() -> Option<Adapter> {
    use burn::tensor::wgpu::wgpu;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    let infos: Vec<_> = adapters.iter().map(|a| a.get_info()).collect();
    let is_gpu = |t: wgpu::DeviceType| matches!(t, wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu);
    let best = infos
        .iter()
        .find(|i| is_gpu(i.device_type))
        .or_else(|| infos.iter().find(|i| i.device_type == wgpu::DeviceType::Cpu))?;
    Some(Adapter { name: format!("{} / {:?}", best.name, best.backend), is_gpu: is_gpu(best.device_type) })
}

/// wgpu's native adapter enumeration completes immediately; poll it to completion.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}
