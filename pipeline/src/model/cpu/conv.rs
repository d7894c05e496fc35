//! Convolution as im2col + GEMM over NHWC activations.
//!
//! - The filter is packed once, at load: TensorFlow's `[kh, kw, cin, cout]` filter read as
//!   a `[kh·kw·cin, cout]` matrix already is the GEMM's right-hand operand.
//! - im2col copies contiguous runs of `cin` values, and a 1×1 stride-1 convolution needs
//!   none (the activation itself is the left-hand operand).
//! - The GEMM writes NHWC output rows in place; bias and LeakyReLU are applied to each
//!   block of rows while it is still in cache.
//!
//! Output rows are cut into blocks that rayon spreads over the cores; each block is one
//! single-threaded call of the `gemm` crate (the GEMM flex itself uses), whose AVX-512
//! kernels are picked at run time where the CPU has them.

use std::cell::RefCell;

use burn::tensor::Tensor;
use rayon::prelude::*;

use super::winograd::WinogradFilter;
use super::{apply, bias_leaky, check_len, gemm_rows, CpuOpError, NhwcShape};

/// Smallest and largest block of output rows handed to one GEMM call: below 32 rows the
/// GEMM's packing overhead dominates; 512-row blocks measured no faster than 256 on the
/// whole network, and 256 keeps the im2col block (up to 256 × 2304 floats here) small.
const MIN_BLOCK_ROWS: usize = 32;
const MAX_BLOCK_ROWS: usize = 256;

/// 3×3 stride-1 convolutions over at least this many input channels run as Winograd
/// F(2×2, 3×3) (see [`super::winograd`]); narrower ones as im2col + GEMM. Timed layer by
/// layer on the development machine, Winograd took 0.55–0.70× the time of im2col + GEMM
/// from 64 input channels up, and 1.0–1.7× at 16–32 channels on 104×104: its transforms
/// cost per input channel while the GEMM they feed is then only `cin` deep.
const WINOGRAD_MIN_CHANNELS: usize = 64;

thread_local! {
    /// Each worker's im2col buffer, reused across blocks and calls.
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One convolution, its filter packed for the GEMM, with bias and optional LeakyReLU.
#[derive(Debug, Clone)]
pub(crate) struct CpuConv {
    /// `[kh·kw·cin, cout]`, row-major.
    filter: Vec<f32>,
    /// `[cout]`; zeros when the graph has no bias.
    bias: Vec<f32>,
    kernel: [usize; 2],
    stride: [usize; 2],
    cin: usize,
    cout: usize,
    leaky_alpha: Option<f32>,
    method: Method,
}

/// How a convolution is computed, chosen at load from its shape.
#[derive(Debug, Clone)]
enum Method {
    /// im2col + GEMM: any shape.
    Gemm,
    /// Winograd F(2×2, 3×3), the filter transformed: 3×3 stride-1 convolutions.
    Winograd(WinogradFilter),
}

impl CpuConv {
    /// `filter` is a TensorFlow HWIO filter, `shape` = `[kh, kw, cin, cout]`, row-major.
    ///
    /// # Panics
    /// When a dimension is zero, or `filter` or `bias` does not have the length `shape`
    /// implies (bugs: the network builder refuses such filters, the weights loader checks
    /// the file's shapes).
    pub(crate) fn new(
        filter: Vec<f32>,
        shape: [usize; 4],
        bias: Option<Vec<f32>>,
        stride: [usize; 2],
        leaky_alpha: Option<f32>,
    ) -> CpuConv {
        let [kh, kw, cin, cout] = shape;
        assert!(!shape.contains(&0), "filter shape {shape:?} has a zero dimension");
        assert_eq!(filter.len(), kh * kw * cin * cout, "filter length does not match its shape");
        let bias = bias.unwrap_or_else(|| vec![0.0; cout]);
        assert_eq!(bias.len(), cout, "bias length does not match the filter's output channels");
        let mut conv = CpuConv { filter, bias, kernel: [kh, kw], stride, cin, cout, leaky_alpha, method: Method::Gemm };
        conv.method = if conv.kernel == [3, 3] && stride == [1, 1] && cin >= WINOGRAD_MIN_CHANNELS {
            Method::Winograd(WinogradFilter::new(&conv.filter, cin, cout))
        } else {
            Method::Gemm
        };
        conv
    }

    /// How this convolution is computed, for profiles.
    pub(crate) fn method_name(&self) -> &'static str {
        match self.method {
            Method::Gemm => "conv, im2col + GEMM (+bias, leaky_relu)",
            Method::Winograd(_) => "conv, Winograd F(2,3) (+bias, leaky_relu)",
        }
    }

    /// The same convolution computed by each method that fits its shape, so tests cover
    /// them all whatever the thresholds say.
    #[cfg(test)]
    fn every_method(&self) -> Vec<CpuConv> {
        let mut methods = vec![Method::Gemm];
        if self.kernel == [3, 3] && self.stride == [1, 1] {
            methods.push(Method::Winograd(WinogradFilter::new(&self.filter, self.cin, self.cout)));
        }
        methods.into_iter().map(|method| CpuConv { method, ..self.clone() }).collect()
    }

    /// The output geometry for `input` zero-padded by `pad` (`[(top, bottom), (left, right)]`).
    pub(crate) fn output_shape(&self, input: NhwcShape, pad: [(usize, usize); 2]) -> Result<NhwcShape, CpuOpError> {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let (span_h, span_w) = (input.h + pad[0].0 + pad[0].1, input.w + pad[1].0 + pad[1].1);
        if input.c != self.cin || span_h < kh || span_w < kw || sh == 0 || sw == 0 {
            return Err(CpuOpError::Shape { input, pad, window: self.kernel, channels: self.cin });
        }
        Ok(NhwcShape { n: input.n, h: (span_h - kh) / sh + 1, w: (span_w - kw) / sw + 1, c: self.cout })
    }

    /// Runs on a physically NHWC flex tensor `[n, h, w, cin]` zero-padded by `pad`;
    /// returns `[n, oh, ow, cout]`.
    pub(crate) fn forward(&self, input: Tensor<4>, pad: [(usize, usize); 2]) -> Result<Tensor<4>, CpuOpError> {
        apply(input, |values, shape| self.run(values, shape, pad))
    }

    /// The convolution on a contiguous NHWC slice; returns the NHWC output and its shape.
    pub(crate) fn run(
        &self,
        input: &[f32],
        shape: NhwcShape,
        pad: [(usize, usize); 2],
    ) -> Result<(Vec<f32>, NhwcShape), CpuOpError> {
        check_len(input, shape)?;
        let out_shape = self.output_shape(shape, pad)?;
        let rows = out_shape.n * out_shape.h * out_shape.w;
        let mut output = vec![0f32; rows * self.cout];
        match &self.method {
            Method::Gemm => self.im2col_gemm(input, shape, out_shape, pad, &mut output),
            Method::Winograd(winograd) => {
                winograd.run(input, shape, out_shape, pad, &self.bias, self.leaky_alpha, &mut output)
            }
        }
        Ok((output, out_shape))
    }

    /// im2col + GEMM into `output`, block by block over the cores.
    fn im2col_gemm(
        &self,
        input: &[f32],
        shape: NhwcShape,
        out_shape: NhwcShape,
        pad: [(usize, usize); 2],
        output: &mut [f32],
    ) {
        let rows = out_shape.n * out_shape.h * out_shape.w;
        let depth = self.filter.len() / self.cout;
        let direct = self.kernel == [1, 1] && self.stride == [1, 1] && pad == [(0, 0); 2];
        let block = block_rows(rows);
        output.par_chunks_mut(block * self.cout).enumerate().for_each(|(index, out)| {
            let first = index * block;
            let count = out.len() / self.cout;
            if direct {
                self.multiply(&input[first * self.cin..(first + count) * self.cin], count, out);
            } else {
                COLUMNS.with(|columns| {
                    let mut columns = columns.borrow_mut();
                    if columns.len() < count * depth {
                        columns.resize(count * depth, 0.0);
                    }
                    let columns = &mut columns[..count * depth];
                    self.im2col(input, shape, out_shape, pad, first, columns);
                    self.multiply(columns, count, out);
                });
            }
            self.finish(out);
        });
    }

    /// `out[rows, cout] = lhs[rows, k] × filter[k, cout]`, single-threaded (the caller
    /// parallelises over blocks).
    fn multiply(&self, lhs: &[f32], rows: usize, out: &mut [f32]) {
        let depth = self.filter.len() / self.cout;
        assert!(lhs.len() == rows * depth && out.len() == rows * self.cout);
        // SAFETY: the three row-major matrices lie inside their slices (checked above),
        // with unit column strides and row strides equal to their widths; `out` is a
        // unique borrow, so it aliases neither operand.
        unsafe {
            gemm_rows(
                [rows, self.cout, depth],
                (out.as_mut_ptr(), self.cout),
                (lhs.as_ptr(), depth),
                (self.filter.as_ptr(), self.cout),
            );
        }
    }

    /// Fills `columns` (`[rows, kh·kw·cin]`) with the receptive fields of output rows
    /// `first..`, zeros where they reach into the padding.
    fn im2col(
        &self,
        input: &[f32],
        shape: NhwcShape,
        out: NhwcShape,
        pad: [(usize, usize); 2],
        first: usize,
        columns: &mut [f32],
    ) {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let cin = self.cin;
        for (offset, column) in columns.chunks_exact_mut(kh * kw * cin).enumerate() {
            let row = first + offset;
            let (ox, oy, b) = (row % out.w, (row / out.w) % out.h, row / (out.w * out.h));
            for (ky, span) in column.chunks_exact_mut(kw * cin).enumerate() {
                let Some(iy) = (oy * sh + ky).checked_sub(pad[0].0).filter(|&y| y < shape.h) else {
                    span.fill(0.0);
                    continue;
                };
                let line = (b * shape.h + iy) * shape.w;
                // The window's kw pixels are adjacent in the input row: away from the
                // borders they are one contiguous run of kw·cin values.
                if let Some(ix) = (ox * sw).checked_sub(pad[1].0).filter(|&x| x + kw <= shape.w) {
                    span.copy_from_slice(&input[(line + ix) * cin..(line + ix + kw) * cin]);
                    continue;
                }
                for (kx, dst) in span.chunks_exact_mut(cin).enumerate() {
                    match (ox * sw + kx).checked_sub(pad[1].0).filter(|&x| x < shape.w) {
                        Some(ix) => dst.copy_from_slice(&input[(line + ix) * cin..(line + ix + 1) * cin]),
                        None => dst.fill(0.0),
                    }
                }
            }
        }
    }

    /// Bias, then LeakyReLU, over a block of output rows.
    fn finish(&self, out: &mut [f32]) {
        for row in out.chunks_exact_mut(self.cout) {
            bias_leaky(row, &self.bias, self.leaky_alpha);
        }
    }
}

/// Rows per block: about four blocks per worker so the cores stay balanced, within the
/// GEMM-friendly range.
fn block_rows(rows: usize) -> usize {
    let workers = rayon::current_num_threads().max(1);
    rows.div_ceil(4 * workers).clamp(MIN_BLOCK_ROWS, MAX_BLOCK_ROWS)
}

#[cfg(test)]
mod tests {
    use super::super::test_values::values;
    use super::*;

    /// Straightforward direct convolution, the definition the fast path must match.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        input: &[f32],
        s: NhwcShape,
        filter: &[f32],
        [kh, kw, cin, cout]: [usize; 4],
        bias: &[f32],
        [sh, sw]: [usize; 2],
        pad: [(usize, usize); 2],
        alpha: Option<f32>,
    ) -> (Vec<f32>, NhwcShape) {
        let oh = (s.h + pad[0].0 + pad[0].1 - kh) / sh + 1;
        let ow = (s.w + pad[1].0 + pad[1].1 - kw) / sw + 1;
        let mut out = vec![0f32; s.n * oh * ow * cout];
        for b in 0..s.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for o in 0..cout {
                        let mut acc = f64::from(bias[o]);
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * sh + ky) as isize - pad[0].0 as isize;
                                let ix = (ox * sw + kx) as isize - pad[1].0 as isize;
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                for c in 0..cin {
                                    let x = input[((b * s.h + iy as usize) * s.w + ix as usize) * cin + c];
                                    let w = filter[((ky * kw + kx) * cin + c) * cout + o];
                                    acc += f64::from(x) * f64::from(w);
                                }
                            }
                        }
                        let v = acc as f32;
                        out[((b * oh + oy) * ow + ox) * cout + o] = match alpha {
                            Some(a) if v < 0.0 => v * a,
                            _ => v,
                        };
                    }
                }
            }
        }
        (out, NhwcShape { n: s.n, h: oh, w: ow, c: cout })
    }

    fn check(
        s: NhwcShape,
        kernel: [usize; 2],
        cout: usize,
        stride: [usize; 2],
        pad: [(usize, usize); 2],
        alpha: Option<f32>,
    ) {
        let shape = [kernel[0], kernel[1], s.c, cout];
        let input = values(s.elements(), 1);
        let filter = values(shape.iter().product(), 2);
        let bias = values(cout, 3);
        let (want, want_shape) = reference(&input, s, &filter, shape, &bias, stride, pad, alpha);
        let conv = CpuConv::new(filter.clone(), shape, Some(bias.clone()), stride, alpha);
        for conv in conv.every_method() {
            let (got, got_shape) = conv.run(&input, s, pad).unwrap();
            assert_eq!(got_shape, want_shape);
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let method = conv.method_name();
            assert!(worst < 1e-4, "{s:?} {kernel:?} stride {stride:?} pad {pad:?} {method}: max error {worst}");
        }
    }

    #[test]
    fn matches_direct_convolution() {
        let s = |n, h, w, c| NhwcShape { n, h, w, c };
        // 3×3, stride 1, symmetric padding, LeakyReLU (the network's common case).
        check(s(1, 9, 7, 5), [3, 3], 6, [1, 1], [(1, 1), (1, 1)], Some(0.1));
        // 3×3, stride 2, the asymmetric (0, 1) padding TensorFlow exports, batch of 2.
        check(s(2, 10, 11, 3), [3, 3], 4, [2, 2], [(0, 1), (0, 1)], None);
        // 1×1, stride 1, no padding: the direct GEMM path; enough rows for several blocks.
        check(s(2, 20, 20, 8), [1, 1], 5, [1, 1], [(0, 0); 2], Some(0.2));
        // Non-square kernel and stride, padding on one side only.
        check(s(1, 6, 8, 2), [1, 3], 3, [1, 2], [(0, 0), (2, 0)], None);
    }

    #[test]
    fn winograd_matches_direct_convolution_on_ragged_tiles_and_odd_paddings() {
        let s = |n, h, w, c| NhwcShape { n, h, w, c };
        // Odd output sizes: the last row and column of 2×2 tiles are half outside.
        check(s(1, 13, 13, 8), [3, 3], 6, [1, 1], [(1, 1), (1, 1)], Some(0.1));
        check(s(2, 7, 10, 3), [3, 3], 5, [1, 1], [(1, 1), (1, 1)], None);
        // No padding, and padding on one side of each axis.
        check(s(1, 9, 8, 4), [3, 3], 4, [1, 1], [(0, 0); 2], Some(0.2));
        check(s(2, 6, 5, 5), [3, 3], 3, [1, 1], [(0, 2), (2, 0)], None);
        // More tiles than one GEMM block (15 × 15 = 225 tiles), a single input channel.
        check(s(1, 30, 29, 1), [3, 3], 7, [1, 1], [(1, 1), (1, 1)], Some(0.1));
    }

    #[test]
    fn refuses_inputs_that_do_not_fit() {
        let conv = CpuConv::new(vec![0.0; 3 * 3 * 4 * 2], [3, 3, 4, 2], None, [1, 1], None);
        let wrong_channels = NhwcShape { n: 1, h: 5, w: 5, c: 3 };
        assert!(matches!(conv.output_shape(wrong_channels, [(0, 0); 2]), Err(CpuOpError::Shape { .. })));
        let too_small = NhwcShape { n: 1, h: 2, w: 5, c: 4 };
        assert!(conv.output_shape(too_small, [(0, 0); 2]).is_err());
        assert!(conv.output_shape(too_small, [(1, 0), (0, 0)]).is_ok());
        let shape = NhwcShape { n: 1, h: 5, w: 5, c: 4 };
        assert!(conv.run(&[0.0; 10], shape, [(0, 0); 2]).is_err(), "a slice shorter than its shape is refused");
    }
}
