//! NHWC kernels for the CPU (flex) backend: convolution (im2col + GEMM, or Winograd),
//! max-pool, bilinear resize and sigmoid.
//!
//! burn's flex backend implements these ops generically on NCHW: its convolution re-packs
//! the filter, transposes the input to NHWC, multiplies `[cout, k] × [k, 512 pixels]`
//! tiles and scatters the result back to NCHW on every call. NanoDet-g ran at ~46 GFLOP/s
//! that way on the 2-core development machine, a quarter of what one core's GEMM reaches.
//! On the CPU the network therefore keeps activations physically NHWC and runs these ops
//! here, where the layout makes the work contiguous: im2col copies runs of channels, the
//! GEMM writes output rows in place, pooling and resizing vectorise over channels (flex's
//! max-pool took 11.6 ms on these NHWC-stored activations, this one 0.7 ms). The network
//! input's NCHW→NHWC transposition is here too: flex's strided copy is slow for three
//! channels.
//!
//! This is a burn backend extension: the ops take and return ordinary `Tensor`s and work
//! on the flex primitive underneath without copying it. The heads' sigmoid is here too
//! (vectorised). Everything else (adds, concats, splits, reshapes) stays burn's.

/// Defines `fn $name`, which calls `$body` (an `#[inline(always)]` fn) compiled for AVX2
/// when the CPU has it, else for the baseline the binary targets. Rust compiles for
/// baseline x86-64 (SSE2) unless told otherwise; the gemm crate picks its kernels at run
/// time the same way.
macro_rules! with_avx2 {
    ($(#[$attr:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$attr])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                // SAFETY: the CPU supports AVX2 (checked just above).
                return unsafe { avx2($($arg),*) };
            }
            $body($($arg),*)
        }
    };
}

mod conv;
mod pool;
mod resize;
mod sigmoid;
mod winograd;

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

pub(super) use conv::CpuConv;
pub(super) use pool::max_pool;
pub(super) use resize::resize_bilinear;

/// [`sigmoid::sigmoid`] on any flex tensor of rank 4 (elementwise: the layout does not matter).
pub(super) fn sigmoid(input: Tensor<4>) -> Result<Tensor<4>, CpuOpError> {
    let dims = input.dims();
    on_values(input, |values| Ok((sigmoid::sigmoid(values), dims)))
}

/// Geometry of a contiguous NHWC activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NhwcShape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl NhwcShape {
    pub(super) fn elements(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub(super) enum CpuOpError {
    #[error("the input is not a flex (CPU) tensor")]
    NotFlex,
    #[error("the input is {0:?}; the CPU kernels run on f32")]
    NotF32(DType),
    #[error("input {input:?} (padded by {pad:?}) does not fit a {window:?} window over {channels} channels")]
    Shape { input: NhwcShape, pad: [(usize, usize); 2], window: [usize; 2], channels: usize },
    #[error("input of {len} values does not have shape {shape:?}")]
    Length { len: usize, shape: NhwcShape },
}

/// Runs `kernel` on the data of a physically NHWC flex tensor and wraps its output
/// (values and NHWC shape) as a flex tensor again.
pub(super) fn apply(
    input: Tensor<4>,
    kernel: impl FnOnce(&[f32], NhwcShape) -> Result<(Vec<f32>, NhwcShape), CpuOpError>,
) -> Result<Tensor<4>, CpuOpError> {
    let [n, h, w, c] = input.dims();
    on_values(input, |values| {
        let (output, shape) = kernel(values, NhwcShape { n, h, w, c })?;
        Ok((output, [shape.n, shape.h, shape.w, shape.c]))
    })
}

/// Physically transposes an NCHW flex tensor `[n, c, h, w]` to NHWC `[n, h, w, c]`.
pub(super) fn nchw_to_nhwc(input: Tensor<4>) -> Result<Tensor<4>, CpuOpError> {
    let [n, c, h, w] = input.dims();
    on_values(input, |values| {
        let shape = NhwcShape { n, h, w, c };
        check_len(values, shape)?;
        let line = w * c;
        let per_task = lines_per_task(n * h);
        let mut output = vec![0f32; shape.elements()];
        output.par_chunks_mut((per_task * line).max(1)).enumerate().for_each(|(task, lines)| {
            for (offset, dst_line) in lines.chunks_exact_mut(line).enumerate() {
                let (b, y) = ((task * per_task + offset) / h, (task * per_task + offset) % h);
                for (x, dst) in dst_line.chunks_exact_mut(c).enumerate() {
                    for (ch, d) in dst.iter_mut().enumerate() {
                        *d = values[((b * c + ch) * h + y) * w + x];
                    }
                }
            }
        });
        Ok((output, [n, h, w, c]))
    })
}

/// Runs `kernel` on the f32 values of a flex tensor (its physical, row-major order) and
/// wraps the values and dimensions it returns as a flex tensor.
fn on_values(
    input: Tensor<4>,
    kernel: impl FnOnce(&[f32]) -> Result<(Vec<f32>, [usize; 4]), CpuOpError>,
) -> Result<Tensor<4>, CpuOpError> {
    let flex = input.try_into_primitive::<Flex>().map_err(|_| CpuOpError::NotFlex)?;
    if flex.dtype() != DType::F32 {
        return Err(CpuOpError::NotF32(flex.dtype()));
    }
    // A no-op (an `Arc` clone) for a contiguous activation that covers its whole buffer.
    let flex = flex.to_contiguous();
    let (values, dims) = kernel(flex.storage::<f32>())?;
    Ok(Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(values, dims))))
}

/// Adds `bias` to one output pixel's channels, then applies LeakyReLU when `alpha` is given.
fn bias_leaky(row: &mut [f32], bias: &[f32], alpha: Option<f32>) {
    match alpha {
        Some(alpha) => {
            for (v, b) in row.iter_mut().zip(bias) {
                let x = *v + b;
                *v = if x < 0.0 { x * alpha } else { x };
            }
        }
        None => {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

/// `dst[m, n] = lhs[m, k] × rhs[k, n]` with the gemm crate, single-threaded (the callers
/// spread blocks over the cores). Each matrix is row-major with adjacent columns, given as
/// its first element and its row stride in elements; `dst` is overwritten, never read.
///
/// # Safety
/// Every row of each matrix lies inside memory its pointer may access, and no one else
/// reads or writes `dst`'s elements during the call (so it aliases neither operand).
unsafe fn gemm_rows([m, n, k]: [usize; 3], dst: (*mut f32, usize), lhs: (*const f32, usize), rhs: (*const f32, usize)) {
    // SAFETY: the caller's contract above is gemm's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            1,
            dst.1 as isize,
            false,
            lhs.0,
            1,
            lhs.1 as isize,
            rhs.0,
            1,
            rhs.1 as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Refuses a slice whose length is not its shape's.
fn check_len(input: &[f32], shape: NhwcShape) -> Result<(), CpuOpError> {
    if input.len() == shape.elements() {
        Ok(())
    } else {
        Err(CpuOpError::Length { len: input.len(), shape })
    }
}

/// Output rows (one `w × c` line each) per rayon task for the memory-bound kernels.
fn lines_per_task(lines: usize) -> usize {
    lines.div_ceil(4 * rayon::current_num_threads().max(1)).max(1)
}

#[cfg(test)]
mod test_values {
    /// Deterministic values in [-1, 1).
    pub(super) fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::test_values::values;
    use super::*;

    #[test]
    fn transposes_nchw_to_nhwc_like_a_permute() {
        let device = Device::flex();
        let input = Tensor::<4>::from_data(TensorData::new(values(2 * 3 * 5 * 4, 9), [2, 3, 5, 4]), &device);
        let want = input.clone().permute([0, 2, 3, 1]).into_data();
        let got = nchw_to_nhwc(input).unwrap();
        assert_eq!(got.dims(), [2, 5, 4, 3]);
        assert_eq!(got.into_data(), want);
    }

    #[test]
    fn kernels_refuse_other_dtypes() {
        let half = Tensor::<4>::zeros([1, 1, 1, 1], &Device::flex()).cast(DType::F16);
        assert_eq!(nchw_to_nhwc(half).unwrap_err(), CpuOpError::NotF32(DType::F16));
    }
}
