//! The NanoDet-g network, compiled from the TF.js graph into burn operations.
//!
//! The graph came from ONNX (NCHW) through TensorFlow (NHWC), so every convolution
//! sits between two `Transpose` nodes and every 3×3 convolution behind an explicit
//! `Pad`. Executing those literally would copy each activation three times. Instead
//! activations carry their *logical* layout apart from their physical one: a `Transpose`
//! only relabels axes, a constant `Pad` is remembered and read by the next convolution
//! (or CPU max-pool) as part of its windows, a convolution's bias `Add` is folded into the
//! convolution at load time, and a LeakyReLU that only follows a convolution (through
//! that `Add` and a `Transpose`) is applied inside it. The plan is still the file's graph,
//! node for node: shapes, strides, paddings, axes and sizes all come from the file.
//!
//! On wgpu, activations around convolutions are physically NCHW (burn's `conv2d`). On
//! the CPU (flex) device, convolutions, max-pooling and resizing run as the NHWC kernels
//! of [`cpu`], so activations there are physically NHWC.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use burn::tensor::activation::{leaky_relu, sigmoid};
use burn::tensor::module::{conv2d, interpolate, max_pool2d};
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions, MaxPoolOptions, PadMode};
use burn::tensor::{Device, Tensor, TensorData};

use super::cpu::{self, CpuConv};
use super::graph::{GraphNode, TfjsGraph};
use super::weights::WeightTensor;
use super::ModelError;

/// Maps logical axis `i` to physical axis `perm[i]`.
type Perm = [usize; 4];
const IDENTITY: Perm = [0, 1, 2, 3];
/// Logical NHWC stored as physical NCHW.
const NHWC_ON_NCHW: Perm = [0, 2, 3, 1];

/// A 4-D activation with its logical layout and a pending padding.
#[derive(Clone)]
struct Act {
    tensor: Tensor<4>,
    perm: Perm,
    pad: Padding,
}

/// A constant padding not applied yet, on physical axes: convolutions and the CPU
/// max-pool read it as part of their windows instead of copying the activation into a
/// larger one.
#[derive(Clone, Copy, PartialEq)]
struct Padding {
    sizes: [(usize, usize); 4],
    value: f32,
}

impl Padding {
    const NONE: Padding = Padding { sizes: [(0, 0); 4], value: 0.0 };

    fn is_none(&self) -> bool {
        self.sizes.iter().all(|&p| p == (0, 0))
    }

    /// The same padding after the tensor's axes are permuted by `axes` (`permute`'s
    /// argument: new axis `j` is old axis `axes[j]`).
    fn permuted(self, axes: Perm) -> Padding {
        Padding { sizes: axes.map(|axis| self.sizes[axis]), ..self }
    }
}

#[derive(Clone)]
enum Value {
    Act(Act),
    Rank3(Tensor<3>),
    Split(Vec<Act>),
}

/// One executable node. Constant inputs (axes, sizes, paddings, weights) are resolved
/// when the plan is built, so a step only names the activations it reads.
// A plan is built once per model (~300 steps): the size of a step does not matter.
#[allow(clippy::large_enum_variant)]
enum Op {
    Input,
    Conv(Conv),
    AddBias { bias: Tensor<1> },
    Add,
    LeakyRelu { alpha: f64 },
    Sigmoid,
    Pad { logical: [(usize, usize); 4], value: f32 },
    MaxPool { kernel: [usize; 2], stride: [usize; 2] },
    Concat { axis: usize },
    Resize { size: [usize; 2] },
    Split { sizes: Vec<usize>, axis: usize },
    Reshape { shape: Vec<i64> },
    Transpose { perm: Vec<usize> },
    Identity,
}

/// A convolution with its bias and (fused) LeakyReLU, in the form its device runs best.
#[allow(clippy::large_enum_variant)]
enum Conv {
    /// burn's `conv2d` on physically NCHW activations (wgpu).
    Burn { weight: Tensor<4>, bias: Option<Tensor<1>>, stride: [usize; 2], leaky_alpha: Option<f64> },
    /// im2col + GEMM on physically NHWC activations (flex).
    Cpu(CpuConv),
}

impl Op {
    /// The name profiles group this step under.
    fn kind(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv(Conv::Cpu(conv)) => conv.method_name(),
            Op::Conv(Conv::Burn { .. }) => "conv (+bias, leaky_relu)",
            Op::AddBias { .. } | Op::Add => "add",
            Op::LeakyRelu { .. } => "leaky_relu",
            Op::Sigmoid => "sigmoid",
            Op::Pad { .. } => "pad",
            Op::MaxPool { .. } => "max_pool",
            Op::Concat { .. } => "concat",
            Op::Resize { .. } => "resize",
            Op::Split { .. } => "split",
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Identity => "identity",
        }
    }
}

/// Milliseconds per kind of operation, summed over `passes` profiled forward passes.
#[derive(Debug, Default, Clone)]
pub struct OpProfile {
    pub ms: BTreeMap<&'static str, f64>,
    pub passes: u32,
}

struct Step {
    name: String,
    op: Op,
    /// (step index, output index) of each activation input.
    inputs: Vec<(usize, usize)>,
}

/// The compiled network on one device.
pub(super) struct Network {
    steps: Vec<Step>,
    outputs: Vec<usize>,
    /// How many times each step's value is read (outputs count once), to free early.
    reads: Vec<usize>,
    device: Device,
    /// Convolution, pooling and resizing run as [`cpu`] kernels (the device is flex).
    cpu: bool,
}

impl Network {
    /// Builds the execution plan for `graph` on `device`, uploading every weight once.
    pub(super) fn compile(graph: &TfjsGraph, device: &Device) -> Result<Network, ModelError> {
        Compiler::new(graph, device).compile()
    }

    pub(super) fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the network on `input` `[N, 3, 416, 416]`; returns the graph outputs in
    /// signature order, each `[N, cells, channels]`.
    pub(super) fn forward(&self, input: Tensor<4>) -> Result<Vec<Tensor<3>>, ModelError> {
        self.execute(input, None)
    }

    /// [`forward`](Self::forward), adding each step's wall time to `profile` by kind of
    /// operation. The device is synchronised after every step, which slows a GPU down.
    pub(super) fn forward_profiled(
        &self,
        input: Tensor<4>,
        profile: &mut OpProfile,
    ) -> Result<Vec<Tensor<3>>, ModelError> {
        profile.passes += 1;
        self.execute(input, Some(profile))
    }

    fn execute(&self, input: Tensor<4>, mut profile: Option<&mut OpProfile>) -> Result<Vec<Tensor<3>>, ModelError> {
        let mut values: Vec<Option<Value>> = vec![None; self.steps.len()];
        let mut remaining = self.reads.clone();
        let mut input = Some(input);
        for (index, step) in self.steps.iter().enumerate() {
            let mut args = Vec::with_capacity(step.inputs.len());
            for &(source, output) in &step.inputs {
                remaining[source] -= 1;
                let value = if remaining[source] == 0 { values[source].take() } else { values[source].clone() };
                let value = value.ok_or_else(|| fail(step, "input value already consumed"))?;
                args.push(match (value, output) {
                    (Value::Split(mut parts), i) if i < parts.len() => Value::Act(parts.swap_remove(i)),
                    (Value::Split(_), _) => return Err(fail(step, "split output index out of range")),
                    (value, 0) => value,
                    _ => return Err(fail(step, "only Split has several outputs")),
                });
            }
            let started = Instant::now();
            let result = match &step.op {
                Op::Input => {
                    let tensor = input.take().ok_or_else(|| fail(step, "input used twice"))?;
                    Value::Act(Act { tensor, perm: IDENTITY, pad: Padding::NONE })
                }
                op => run(step, op, args, self.cpu)?,
            };
            if let Some(profile) = profile.as_deref_mut() {
                self.device.sync().map_err(|e| fail(step, &format!("device: {e:?}")))?;
                *profile.ms.entry(step.op.kind()).or_default() += started.elapsed().as_secs_f64() * 1e3;
            }
            values[index] = Some(result);
        }
        self.outputs
            .iter()
            .map(|&i| match values[i].take() {
                Some(Value::Rank3(t)) => Ok(t),
                _ => Err(ModelError::Inference(format!("output `{}` is not a rank-3 tensor", self.steps[i].name))),
            })
            .collect()
    }
}

fn fail(step: &Step, reason: &str) -> ModelError {
    ModelError::Inference(format!("node `{}`: {reason}", step.name))
}

fn act(step: &Step, value: Value) -> Result<Act, ModelError> {
    match value {
        Value::Act(a) => Ok(a),
        _ => Err(fail(step, "expected a 4-D activation")),
    }
}

fn run(step: &Step, op: &Op, args: Vec<Value>, cpu: bool) -> Result<Value, ModelError> {
    let mut args = args.into_iter();
    let mut next = || args.next().ok_or_else(|| fail(step, "missing input"));
    Ok(match op {
        Op::Input => unreachable!("handled by forward"),
        Op::Identity => next()?,
        Op::Transpose { perm } => match next()? {
            Value::Act(a) => Value::Act(Act { perm: std::array::from_fn(|i| a.perm[perm[i]]), ..a }),
            Value::Rank3(t) => Value::Rank3(t.permute([perm[0], perm[1], perm[2]])),
            Value::Split(_) => return Err(fail(step, "transpose of a split")),
        },
        Op::Pad { logical, value } => {
            let a = act(step, next()?)?;
            let mut physical = [(0, 0); 4];
            for (i, &p) in logical.iter().enumerate() {
                physical[a.perm[i]] = p;
            }
            // Paddings with one value add up; one with another value is applied first.
            let a = if a.pad.is_none() || a.pad.value == *value { a } else { materialize(a) };
            let sizes = std::array::from_fn(|i| (a.pad.sizes[i].0 + physical[i].0, a.pad.sizes[i].1 + physical[i].1));
            Value::Act(Act { pad: Padding { sizes, value: *value }, ..a })
        }
        Op::Conv(Conv::Burn { weight, bias, stride, leaky_alpha }) => {
            let (a, pad, _) = take_spatial_pad(arrange(act(step, next()?)?, NHWC_ON_NCHW), [2, 3], |v| v == 0.0);
            let options = ConvOptions::new_with_padding(*stride, pad, [1, 1], 1);
            let tensor = conv2d(a.tensor, weight.clone(), bias.clone(), options);
            let tensor = match leaky_alpha {
                Some(alpha) => leaky_relu(tensor, *alpha),
                None => tensor,
            };
            Value::Act(Act { tensor, perm: NHWC_ON_NCHW, pad: Padding::NONE })
        }
        Op::Conv(Conv::Cpu(conv)) => {
            let (a, pad, _) = take_spatial_pad(cpu_nhwc(step, act(step, next()?)?)?, [1, 2], |v| v == 0.0);
            let tensor = conv.forward(a.tensor, pad).map_err(|e| fail(step, &e.to_string()))?;
            Value::Act(Act { tensor, perm: IDENTITY, pad: Padding::NONE })
        }
        Op::AddBias { bias } => {
            let a = materialize(act(step, next()?)?);
            let channels = bias.dims()[0];
            let mut shape = [1; 4];
            shape[a.perm[3]] = channels;
            let tensor = a.tensor + bias.clone().reshape(shape);
            Value::Act(Act { tensor, ..a })
        }
        Op::Add => {
            let a = materialize(act(step, next()?)?);
            let b = arrange(materialize(act(step, next()?)?), a.perm);
            Value::Act(Act { tensor: a.tensor + b.tensor, ..a })
        }
        Op::LeakyRelu { alpha } => map(step, next()?, |t| leaky_relu(t, *alpha))?,
        Op::Sigmoid => match next()? {
            Value::Rank3(t) => Value::Rank3(sigmoid(t)),
            Value::Act(a) if cpu => {
                let a = materialize(a);
                let tensor = cpu::sigmoid(a.tensor).map_err(|e| fail(step, &e.to_string()))?;
                Value::Act(Act { tensor, ..a })
            }
            v => map(step, v, sigmoid)?,
        },
        Op::MaxPool { kernel, stride } if cpu => {
            let (a, pad, value) = take_spatial_pad(cpu_nhwc(step, act(step, next()?)?)?, [1, 2], |_| true);
            let tensor = cpu::apply(a.tensor, |x, shape| cpu::max_pool(x, shape, *kernel, *stride, pad, value))
                .map_err(|e| fail(step, &e.to_string()))?;
            Value::Act(Act { tensor, ..a })
        }
        Op::MaxPool { kernel, stride } => {
            let a = materialize(arrange(act(step, next()?)?, NHWC_ON_NCHW));
            let options = MaxPoolOptions {
                kernel_size: *kernel,
                stride: *stride,
                padding: [(0, 0); 2],
                dilation: [1, 1],
                ceil_mode: false,
            };
            Value::Act(Act { tensor: max_pool2d(a.tensor, options), ..a })
        }
        Op::Concat { axis } => {
            let first = materialize(act(step, next()?)?);
            let perm = first.perm;
            let mut tensors = vec![first.tensor];
            for value in args {
                tensors.push(materialize(arrange(act(step, value)?, perm)).tensor);
            }
            Value::Act(Act { tensor: Tensor::cat(tensors, perm[*axis]), perm, pad: Padding::NONE })
        }
        Op::Resize { size } if cpu => {
            let a = materialize(cpu_nhwc(step, act(step, next()?)?)?);
            let tensor = cpu::apply(a.tensor, |x, shape| cpu::resize_bilinear(x, shape, *size))
                .map_err(|e| fail(step, &e.to_string()))?;
            Value::Act(Act { tensor, ..a })
        }
        Op::Resize { size } => {
            let a = materialize(arrange(act(step, next()?)?, NHWC_ON_NCHW));
            let options =
                InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false).with_output_size(*size);
            Value::Act(Act { tensor: interpolate(a.tensor, options), ..a })
        }
        Op::Split { sizes, axis } => {
            let a = materialize(act(step, next()?)?);
            let Act { tensor, perm, pad } = a;
            let parts = tensor.split_with_sizes(sizes.clone(), perm[*axis]);
            Value::Split(parts.into_iter().map(|tensor| Act { tensor, perm, pad }).collect())
        }
        Op::Reshape { shape } => {
            let a = materialize(arrange(act(step, next()?)?, IDENTITY));
            let dims = a.tensor.dims();
            let total: usize = dims.iter().product();
            let [d0, d1, d2] = resolve_shape(shape, dims[0], total).ok_or_else(|| fail(step, "unsupported reshape"))?;
            Value::Rank3(a.tensor.reshape([d0, d1, d2]))
        }
    })
}

/// Elementwise op on an activation; the pending zero padding is applied first so the
/// op sees the same values as the graph.
fn map(step: &Step, value: Value, f: impl Fn(Tensor<4>) -> Tensor<4>) -> Result<Value, ModelError> {
    let a = materialize(act(step, value)?);
    Ok(Value::Act(Act { tensor: f(a.tensor), ..a }))
}

fn materialize(a: Act) -> Act {
    if a.pad.is_none() {
        return a;
    }
    Act { tensor: a.tensor.pad(a.pad.sizes, PadMode::Constant(a.pad.value)), pad: Padding::NONE, ..a }
}

/// Hands the pending padding to a consumer that reads it on the two physical `axes` only
/// (and accepts its value): returns the activation without it, its sizes on `axes` and its
/// value. Any other padding is applied first.
fn take_spatial_pad(a: Act, axes: [usize; 2], accepts: impl Fn(f32) -> bool) -> (Act, [(usize, usize); 2], f32) {
    let only_on_axes = (0..4).all(|i| axes.contains(&i) || a.pad.sizes[i] == (0, 0));
    if a.pad.is_none() || !only_on_axes || !accepts(a.pad.value) {
        return (materialize(a), [(0, 0); 2], 0.0);
    }
    let (sizes, value) = ([a.pad.sizes[axes[0]], a.pad.sizes[axes[1]]], a.pad.value);
    (Act { pad: Padding::NONE, ..a }, sizes, value)
}

/// Physically permutes `a` so that its logical axes sit where `want` says; a pending
/// padding moves with its axes.
fn arrange(a: Act, want: Perm) -> Act {
    if a.perm == want {
        return a;
    }
    let axes = permutation_to(a.perm, want);
    Act { tensor: a.tensor.permute(axes), perm: want, pad: a.pad.permuted(axes) }
}

/// The `permute` argument taking physical layout `from` to `to`: new axis `j` is old axis
/// `axes[j]`.
fn permutation_to(from: Perm, to: Perm) -> Perm {
    let mut axes = [0; 4];
    for i in 0..4 {
        axes[to[i]] = from[i];
    }
    axes
}

/// `a` laid out physically NHWC (logical NHWC) for the CPU kernels. The network input
/// arrives NCHW; its transposition is a CPU kernel too, flex's strided copy being slow for
/// three channels.
fn cpu_nhwc(step: &Step, a: Act) -> Result<Act, ModelError> {
    if a.perm != NHWC_ON_NCHW {
        return Ok(arrange(a, IDENTITY));
    }
    let pad = a.pad.permuted(permutation_to(a.perm, IDENTITY));
    let tensor = cpu::nchw_to_nhwc(a.tensor).map_err(|e| fail(step, &e.to_string()))?;
    Ok(Act { tensor, perm: IDENTITY, pad })
}

/// Resolves a rank-3 target shape. The exported graph fixes the batch to 1; dimension 0
/// is the batch, so it follows the actual batch size. One `-1` is inferred.
fn resolve_shape(shape: &[i64], batch: usize, total: usize) -> Option<[usize; 3]> {
    if shape.len() != 3 {
        return None;
    }
    let mut dims: Vec<Option<usize>> = shape.iter().map(|&d| if d < 0 { None } else { Some(d as usize) }).collect();
    if dims[0] == Some(1) {
        dims[0] = Some(batch);
    }
    let known: usize = dims.iter().flatten().product();
    let missing = dims.iter().filter(|d| d.is_none()).count();
    match missing {
        0 if known == total => {}
        1 if known > 0 && total % known == 0 => {
            let fill = total / known;
            dims.iter_mut().filter(|d| d.is_none()).for_each(|d| *d = Some(fill));
        }
        _ => return None,
    }
    Some([dims[0]?, dims[1]?, dims[2]?])
}

/// Turns graph nodes into steps, folding constants.
struct Compiler<'a> {
    graph: &'a TfjsGraph,
    device: &'a Device,
    nodes: HashMap<&'a str, &'a GraphNode>,
    /// Constant values, including integer nodes folded at load (shape arithmetic).
    consts: HashMap<String, WeightTensor>,
    steps: Vec<Step>,
    index: HashMap<String, usize>,
    /// Convolutions whose bias `Add` was folded in: Add node name → conv node name.
    folded_bias: HashMap<String, String>,
    /// Convolutions that apply the LeakyReLU following them: conv node name → alpha.
    fused_leaky: HashMap<String, f64>,
    /// The LeakyReLU nodes applied inside a convolution (they become identities).
    leaky_in_conv: HashSet<String>,
    /// Convolutions run as [`CpuConv`] (the device is flex).
    cpu: bool,
}

impl<'a> Compiler<'a> {
    fn new(graph: &'a TfjsGraph, device: &'a Device) -> Self {
        Compiler {
            graph,
            device,
            nodes: graph.nodes.iter().map(|n| (n.name.as_str(), n)).collect(),
            consts: graph.consts.clone(),
            steps: Vec::new(),
            index: HashMap::new(),
            folded_bias: HashMap::new(),
            fused_leaky: HashMap::new(),
            leaky_in_conv: HashSet::new(),
            cpu: matches!(device.as_dispatch(), burn::backend::DispatchDevice::Flex(_)),
        }
    }

    fn compile(mut self) -> Result<Network, ModelError> {
        self.find_bias_folds();
        self.find_leaky_folds();
        let mut outputs = Vec::new();
        for name in self.graph.outputs.clone() {
            outputs.push(self.visit(&name)?);
        }
        let mut reads = vec![0; self.steps.len()];
        for step in &self.steps {
            for &(i, _) in &step.inputs {
                reads[i] += 1;
            }
        }
        for &i in &outputs {
            reads[i] += 1;
        }
        Ok(Network { steps: self.steps, outputs, reads, device: self.device.clone(), cpu: self.cpu })
    }

    /// A `Conv2D` read only by an `Add` of a `[channels]` constant gets that bias.
    fn find_bias_folds(&mut self) {
        let mut readers: HashMap<&str, Vec<&GraphNode>> = HashMap::new();
        for node in &self.graph.nodes {
            for input in &node.input {
                readers.entry(split_input(input).0).or_default().push(node);
            }
        }
        for node in self.graph.nodes.iter().filter(|n| n.op == "Conv2D") {
            let Some([reader]) = readers.get(node.name.as_str()).map(Vec::as_slice) else { continue };
            if !matches!(reader.op.as_str(), "Add" | "AddV2" | "BiasAdd") || reader.input.len() != 2 {
                continue;
            }
            let bias = split_input(&reader.input[1]).0;
            let filter_out = node.input.get(1).and_then(|f| self.consts.get(split_input(f).0)).map(|w| w.shape[3]);
            if split_input(&reader.input[0]).0 == node.name
                && self.consts.get(bias).map(|b| b.shape.clone()) == filter_out.map(|c| vec![c])
            {
                self.folded_bias.insert(reader.name.clone(), node.name.clone());
            }
        }
    }

    /// A `LeakyRelu` whose input chain back to a `Conv2D` is only that convolution's
    /// folded bias `Add` and `Transpose`s, each read by nothing else, is applied inside the
    /// convolution (an elementwise op commutes with transposes).
    fn find_leaky_folds(&mut self) {
        let mut reader_count: HashMap<&str, usize> = HashMap::new();
        for node in &self.graph.nodes {
            for input in &node.input {
                *reader_count.entry(split_input(input).0).or_default() += 1;
            }
        }
        for output in &self.graph.outputs {
            *reader_count.entry(output.as_str()).or_default() += 1;
        }
        for node in self.graph.nodes.iter().filter(|n| n.op == "LeakyRelu") {
            let mut current = node.input.first().map(|i| split_input(i).0);
            while let Some(name) = current {
                let Some(source) = self.nodes.get(name) else { break };
                if reader_count.get(name) != Some(&1) {
                    break;
                }
                if source.op == "Conv2D" {
                    let alpha = f64::from(node.float("alpha").unwrap_or(0.2));
                    self.fused_leaky.insert(source.name.clone(), alpha);
                    self.leaky_in_conv.insert(node.name.clone());
                    break;
                }
                let passes = source.op == "Transpose" || self.folded_bias.contains_key(&source.name);
                current = if passes { source.input.first().map(|i| split_input(i).0) } else { None };
            }
        }
    }

    fn visit(&mut self, name: &str) -> Result<usize, ModelError> {
        if let Some(&i) = self.index.get(name) {
            return Ok(i);
        }
        let node = *self.nodes.get(name).ok_or_else(|| self.bad(name, "?", "refers to an unknown node"))?;
        let (op, activation_inputs) = self.lower(node)?;
        let mut inputs = Vec::new();
        for input in activation_inputs {
            let (source, output) = split_input(&input);
            inputs.push((self.visit(source)?, output));
        }
        self.steps.push(Step { name: name.to_string(), op, inputs });
        let i = self.steps.len() - 1;
        self.index.insert(name.to_string(), i);
        Ok(i)
    }

    /// The step for `node` and the names of its activation inputs.
    fn lower(&mut self, node: &GraphNode) -> Result<(Op, Vec<String>), ModelError> {
        let inputs: Vec<String> = node.input.iter().filter(|i| !i.starts_with('^')).cloned().collect();
        let first = || inputs.first().cloned().into_iter().collect::<Vec<_>>();
        let op = match node.op.as_str() {
            "Placeholder" if node.name == self.graph.input => return Ok((Op::Input, vec![])),
            "Identity" => return Ok((Op::Identity, first())),
            "Conv2D" => {
                self.expect_format(node)?;
                let filter = self.constant(node, inputs.get(1))?;
                let &[kh, kw, cin, cout] = filter.shape.as_slice() else {
                    return Err(self.bad(&node.name, &node.op, "filter is not [kh, kw, in, out]"));
                };
                if [kh, kw, cin, cout].contains(&0) {
                    return Err(self.bad(&node.name, &node.op, "filter has a zero dimension"));
                }
                let values = filter.as_floats().ok_or_else(|| self.bad(&node.name, &node.op, "filter is not float"))?;
                let stride = self.nhwc_pair(node, "strides")?;
                let bias = self.folded_bias.iter().find(|(_, conv)| **conv == node.name).map(|(add, _)| add.clone());
                let bias = match bias {
                    Some(add) => {
                        let add_node = self.nodes[add.as_str()];
                        let b = self.constant(add_node, add_node.input.get(1))?;
                        Some(self.floats(add_node, &b)?)
                    }
                    None => None,
                };
                let leaky_alpha = self.fused_leaky.get(&node.name).copied();
                if self.cpu {
                    let conv =
                        CpuConv::new(values.to_vec(), [kh, kw, cin, cout], bias, stride, leaky_alpha.map(|a| a as f32));
                    return Ok((Op::Conv(Conv::Cpu(conv)), first()));
                }
                // HWIO (TensorFlow) → OIHW (burn).
                let mut oihw = vec![0f32; values.len()];
                for (i, &v) in values.iter().enumerate() {
                    let (o, rest) = (i % cout, i / cout);
                    let (c, rest) = (rest % cin, rest / cin);
                    let (x, y) = (rest % kw, rest / kw);
                    oihw[((o * cin + c) * kh + y) * kw + x] = v;
                }
                let weight = Tensor::<4>::from_data(TensorData::new(oihw, [cout, cin, kh, kw]), self.device);
                let bias = bias.map(|b| tensor1(b, self.device));
                return Ok((Op::Conv(Conv::Burn { weight, bias, stride, leaky_alpha }), first()));
            }
            "Add" | "AddV2" | "BiasAdd" if self.folded_bias.contains_key(&node.name) => {
                return Ok((Op::Identity, first()));
            }
            "Add" | "AddV2" | "BiasAdd" => {
                let consts: Vec<Option<&WeightTensor>> =
                    inputs.iter().map(|i| self.consts.get(split_input(i).0)).collect();
                match consts.as_slice() {
                    [Some(_), Some(_)] => {
                        return Err(self.bad(&node.name, &node.op, "constant add used as an activation"))
                    }
                    [None, Some(b)] => {
                        let bias = self.float_tensor1(node, &(*b).clone())?;
                        return Ok((Op::AddBias { bias }, first()));
                    }
                    [None, None] => return Ok((Op::Add, inputs)),
                    _ => return Err(self.bad(&node.name, &node.op, "unsupported operand order")),
                }
            }
            "LeakyRelu" if self.leaky_in_conv.contains(&node.name) => return Ok((Op::Identity, first())),
            "LeakyRelu" => Op::LeakyRelu { alpha: f64::from(node.float("alpha").unwrap_or(0.2)) },
            "Sigmoid" => Op::Sigmoid,
            "Pad" | "PadV2" => {
                let paddings = self.ints(node, inputs.get(1))?;
                if paddings.len() != 8 || paddings.iter().any(|&p| p < 0) {
                    return Err(self.bad(&node.name, &node.op, "paddings must be a non-negative [4, 2]"));
                }
                let logical = std::array::from_fn(|i| (paddings[2 * i] as usize, paddings[2 * i + 1] as usize));
                let value = match inputs.get(2) {
                    Some(v) => {
                        let v = self.constant(node, Some(v))?;
                        v.as_floats()
                            .and_then(|f| f.first().copied())
                            .ok_or_else(|| self.bad(&node.name, &node.op, "pad value"))?
                    }
                    None => 0.0,
                };
                Op::Pad { logical, value }
            }
            "MaxPool" => {
                self.expect_format(node)?;
                Op::MaxPool { kernel: self.nhwc_pair(node, "ksize")?, stride: self.nhwc_pair(node, "strides")? }
            }
            "ConcatV2" => {
                let axis = self.axis(node, inputs.last())?;
                return Ok((Op::Concat { axis }, inputs[..inputs.len() - 1].to_vec()));
            }
            "ResizeBilinear" => {
                if node.bool("half_pixel_centers") != Some(true) || node.bool("align_corners") == Some(true) {
                    return Err(self.bad(&node.name, &node.op, "only half-pixel-centre resizing is supported"));
                }
                let size = self.ints(node, inputs.get(1))?;
                let [h, w] = size.as_slice() else {
                    return Err(self.bad(&node.name, &node.op, "size must have 2 values"));
                };
                Op::Resize { size: [*h as usize, *w as usize] }
            }
            "SplitV" => {
                let sizes = self.ints(node, inputs.get(1))?;
                if sizes.iter().any(|&s| s < 0) {
                    return Err(self.bad(&node.name, &node.op, "inferred split sizes are not supported"));
                }
                let axis = self.axis(node, inputs.get(2))?;
                Op::Split { sizes: sizes.into_iter().map(|s| s as usize).collect(), axis }
            }
            "Reshape" => Op::Reshape { shape: self.ints(node, inputs.get(1))? },
            "Transpose" => {
                let perm = self.ints(node, inputs.get(1))?;
                Op::Transpose { perm: perm.into_iter().map(|p| p as usize).collect() }
            }
            op => return Err(self.bad(&node.name, op, "operation not supported by this network builder")),
        };
        Ok((op, first()))
    }

    /// The constant behind `input`, folding integer `AddV2` / `SparseToDense` subgraphs.
    fn constant(&mut self, node: &GraphNode, input: Option<&String>) -> Result<WeightTensor, ModelError> {
        let name =
            input.map(|i| split_input(i).0).ok_or_else(|| self.bad(&node.name, &node.op, "missing constant input"))?;
        if let Some(t) = self.consts.get(name) {
            return Ok(t.clone());
        }
        let source = *self.nodes.get(name).ok_or_else(|| self.bad(name, "?", "unknown node"))?;
        let args: Vec<WeightTensor> =
            source.input.clone().iter().map(|i| self.constant(source, Some(i))).collect::<Result<_, _>>()?;
        let ints = |t: &WeightTensor| t.as_ints().ok_or_else(|| self.bad(name, &source.op, "expected integers"));
        let folded = match (source.op.as_str(), args.as_slice()) {
            ("AddV2" | "Add", [a, b]) if a.shape == b.shape => {
                let (a, b) = (ints(a)?, ints(b)?);
                int_tensor(a.iter().zip(&b).map(|(x, y)| x + y).collect(), a.len())
            }
            ("SparseToDense", [indices, shape, values, default]) => {
                let (indices, shape, values, default) = (ints(indices)?, ints(shape)?, ints(values)?, ints(default)?);
                let len = *shape.first().ok_or_else(|| self.bad(name, &source.op, "empty output shape"))? as usize;
                let fill = default.first().copied().unwrap_or(0);
                let mut dense = vec![fill; len];
                for (k, &i) in indices.iter().enumerate() {
                    let slot =
                        dense.get_mut(i as usize).ok_or_else(|| self.bad(name, &source.op, "index out of range"))?;
                    *slot = if values.len() == 1 { values[0] } else { values[k] };
                }
                int_tensor(dense, len)
            }
            (op, _) => return Err(self.bad(name, op, "expected a constant expression")),
        };
        self.consts.insert(name.to_string(), folded.clone());
        Ok(folded)
    }

    fn ints(&mut self, node: &GraphNode, input: Option<&String>) -> Result<Vec<i64>, ModelError> {
        let t = self.constant(node, input)?;
        t.as_ints().ok_or_else(|| self.bad(&node.name, &node.op, "expected an integer constant"))
    }

    fn axis(&mut self, node: &GraphNode, input: Option<&String>) -> Result<usize, ModelError> {
        let axis = *self.ints(node, input)?.first().ok_or_else(|| self.bad(&node.name, &node.op, "missing axis"))?;
        let axis = if axis < 0 { axis + 4 } else { axis };
        if !(0..4).contains(&axis) {
            return Err(self.bad(&node.name, &node.op, "axis out of range for a 4-D activation"));
        }
        Ok(axis as usize)
    }

    fn float_tensor1(&self, node: &GraphNode, t: &WeightTensor) -> Result<Tensor<1>, ModelError> {
        Ok(tensor1(self.floats(node, t)?, self.device))
    }

    fn floats(&self, node: &GraphNode, t: &WeightTensor) -> Result<Vec<f32>, ModelError> {
        let values = t.as_floats().ok_or_else(|| self.bad(&node.name, &node.op, "expected a float constant"))?;
        Ok(values.to_vec())
    }

    fn expect_format(&self, node: &GraphNode) -> Result<(), ModelError> {
        let format = node.string("data_format").unwrap_or_else(|| "NHWC".into());
        let padding = node.string("padding").unwrap_or_else(|| "VALID".into());
        let dilated = node.int_list("dilations").is_some_and(|d| d.iter().any(|&x| x != 1));
        if format != "NHWC" || padding != "VALID" || dilated {
            return Err(self.bad(&node.name, &node.op, "only NHWC, VALID padding, no dilation is supported"));
        }
        Ok(())
    }

    /// `[1, h, w, 1]` list attribute → `[h, w]`.
    fn nhwc_pair(&self, node: &GraphNode, key: &str) -> Result<[usize; 2], ModelError> {
        match node.int_list(key).as_deref() {
            Some(&[1, h, w, 1]) if h > 0 && w > 0 => Ok([h as usize, w as usize]),
            _ => Err(self.bad(&node.name, &node.op, &format!("attribute `{key}` must be [1, h, w, 1]"))),
        }
    }

    fn bad(&self, node: &str, op: &str, reason: &str) -> ModelError {
        ModelError::Unsupported { node: node.to_string(), op: op.to_string(), reason: reason.to_string() }
    }
}

fn tensor1(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let len = values.len();
    Tensor::<1>::from_data(TensorData::new(values, [len]), device)
}

fn int_tensor(values: Vec<i64>, len: usize) -> WeightTensor {
    WeightTensor {
        shape: vec![len],
        values: super::weights::Values::I32(values.into_iter().map(|v| v as i32).collect()),
    }
}

/// `"node:1"` → `("node", 1)`, `"node"` → `("node", 0)`.
fn split_input(input: &str) -> (&str, usize) {
    match input.rsplit_once(':') {
        Some((name, index)) if index.chars().all(|c| c.is_ascii_digit()) => (name, index.parse().unwrap_or(0)),
        _ => (input, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_follows_input_in_reshape() {
        assert_eq!(resolve_shape(&[1, 80, -1], 4, 4 * 80 * 169), Some([4, 80, 169]));
        assert_eq!(resolve_shape(&[1, 80, 169], 1, 80 * 169), Some([1, 80, 169]));
        assert_eq!(resolve_shape(&[1, 80, 170], 1, 80 * 169), None);
    }

    #[test]
    fn splits_output_suffix() {
        assert_eq!(split_input("a/b:1"), ("a/b", 1));
        assert_eq!(split_input("a/b"), ("a/b", 0));
    }
}
