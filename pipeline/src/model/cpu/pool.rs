//! Max-pooling over NHWC activations. The graph pads explicitly before pooling; that
//! padding arrives here as `pad` and `value` instead of as a larger copy of the input.

use rayon::prelude::*;

use super::{check_len, lines_per_task, CpuOpError, NhwcShape};

/// `kernel`-sized max over windows `stride` apart, of the input padded by `pad`
/// (`[(top, bottom), (left, right)]`) with `value`.
pub(crate) fn max_pool(
    input: &[f32],
    shape: NhwcShape,
    kernel: [usize; 2],
    stride: [usize; 2],
    pad: [(usize, usize); 2],
    value: f32,
) -> Result<(Vec<f32>, NhwcShape), CpuOpError> {
    check_len(input, shape)?;
    let [kh, kw] = kernel;
    let [sh, sw] = stride;
    let (span_h, span_w) = (shape.h + pad[0].0 + pad[0].1, shape.w + pad[1].0 + pad[1].1);
    if span_h < kh || span_w < kw || kh == 0 || kw == 0 || sh == 0 || sw == 0 {
        return Err(CpuOpError::Shape { input: shape, pad, window: kernel, channels: shape.c });
    }
    let out = NhwcShape { n: shape.n, h: (span_h - kh) / sh + 1, w: (span_w - kw) / sw + 1, c: shape.c };
    let c = shape.c;
    let line = out.w * c;
    let per_task = lines_per_task(out.n * out.h);
    let mut output = vec![0f32; out.elements()];
    output.par_chunks_mut((per_task * line).max(1)).enumerate().for_each(|(task, lines)| {
        for (offset, dst_line) in lines.chunks_exact_mut(line).enumerate() {
            let index = task * per_task + offset;
            let (b, oy) = (index / out.h, index % out.h);
            for (ox, dst) in dst_line.chunks_exact_mut(c).enumerate() {
                dst.fill(f32::NEG_INFINITY);
                let mut padded = false;
                for ky in 0..kh {
                    let Some(iy) = (oy * sh + ky).checked_sub(pad[0].0).filter(|&y| y < shape.h) else {
                        padded = true;
                        continue;
                    };
                    let row = (b * shape.h + iy) * shape.w;
                    for kx in 0..kw {
                        let Some(ix) = (ox * sw + kx).checked_sub(pad[1].0).filter(|&x| x < shape.w) else {
                            padded = true;
                            continue;
                        };
                        let src = (row + ix) * c;
                        for (d, &s) in dst.iter_mut().zip(&input[src..src + c]) {
                            *d = d.max(s);
                        }
                    }
                }
                if padded {
                    dst.iter_mut().for_each(|d| *d = d.max(value));
                }
            }
        }
    });
    Ok((output, out))
}

#[cfg(test)]
mod tests {
    use super::super::test_values::values;
    use super::*;

    #[test]
    fn matches_windowed_maximum() {
        let shape = NhwcShape { n: 2, h: 9, w: 8, c: 5 };
        let input = values(shape.elements(), 7);
        let (got, out) = max_pool(&input, shape, [3, 3], [2, 2], [(0, 0); 2], 0.0).unwrap();
        assert_eq!(out, NhwcShape { n: 2, h: 4, w: 3, c: 5 });
        for b in 0..2 {
            for oy in 0..4 {
                for ox in 0..3 {
                    for ch in 0..5 {
                        let mut want = f32::NEG_INFINITY;
                        for y in oy * 2..oy * 2 + 3 {
                            for x in ox * 2..ox * 2 + 3 {
                                want = want.max(input[((b * 9 + y) * 8 + x) * 5 + ch]);
                            }
                        }
                        assert_eq!(got[((b * 4 + oy) * 3 + ox) * 5 + ch], want);
                    }
                }
            }
        }
    }

    #[test]
    fn refuses_a_window_larger_than_the_input() {
        let shape = NhwcShape { n: 1, h: 2, w: 8, c: 1 };
        assert!(max_pool(&[0.0; 16], shape, [3, 3], [1, 1], [(0, 0); 2], 0.0).is_err());
        assert!(max_pool(&[0.0; 16], shape, [3, 3], [1, 1], [(1, 0), (0, 0)], 0.0).is_ok());
        assert!(
            max_pool(&[0.0; 15], shape, [1, 1], [1, 1], [(0, 0); 2], 0.0).is_err(),
            "a slice shorter than its shape is refused"
        );
    }

    #[test]
    fn zero_channels_give_an_empty_output() {
        let (got, out) = max_pool(&[], NhwcShape { n: 1, h: 4, w: 4, c: 0 }, [2, 2], [2, 2], [(0, 0); 2], 0.0).unwrap();
        assert!(got.is_empty());
        assert_eq!(out, NhwcShape { n: 1, h: 2, w: 2, c: 0 });
    }

    #[test]
    fn padding_takes_part_in_the_windows_that_reach_it() {
        // One row [1, -2, 3] padded by one on each side: with -inf the border windows see
        // only the image; with 5 the padding wins wherever a window reaches it.
        let shape = NhwcShape { n: 1, h: 1, w: 3, c: 1 };
        let (got, out) =
            max_pool(&[1.0, -2.0, 3.0], shape, [1, 2], [1, 1], [(0, 0), (1, 1)], f32::NEG_INFINITY).unwrap();
        assert_eq!(out.w, 4);
        assert_eq!(got, vec![1.0, 1.0, 3.0, 3.0]);
        let (got, _) = max_pool(&[1.0, -2.0, 3.0], shape, [1, 2], [1, 1], [(0, 0), (1, 1)], 5.0).unwrap();
        assert_eq!(got, vec![5.0, 1.0, 3.0, 5.0]);
    }
}
