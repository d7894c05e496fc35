//! Bilinear resizing over NHWC activations with half-pixel centres (TensorFlow's
//! `ResizeBilinear(half_pixel_centers=true)`, PyTorch's `align_corners=False`).

use rayon::prelude::*;

use super::{check_len, lines_per_task, CpuOpError, NhwcShape};

/// Source taps for one output coordinate: the two neighbours and the weight of the second.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Taps {
    low: usize,
    high: usize,
    lerp: f32,
}

/// TensorFlow's half-pixel mapping: `in = (out + 0.5) · in/out − 0.5`, neighbours clamped to
/// the image, weight taken from the unclamped position.
fn taps(out_size: usize, in_size: usize) -> Vec<Taps> {
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|o| {
            let position = (o as f32 + 0.5) * scale - 0.5;
            let floor = position.floor();
            let low = floor.max(0.0) as usize;
            let high = (position.ceil().max(0.0) as usize).min(in_size - 1);
            Taps { low: low.min(in_size - 1), high, lerp: position - floor }
        })
        .collect()
}

/// Resizes every image of `input` to `size` = `[height, width]`.
pub(crate) fn resize_bilinear(
    input: &[f32],
    shape: NhwcShape,
    size: [usize; 2],
) -> Result<(Vec<f32>, NhwcShape), CpuOpError> {
    check_len(input, shape)?;
    let [oh, ow] = size;
    if shape.h == 0 || shape.w == 0 || oh == 0 || ow == 0 {
        return Err(CpuOpError::Shape { input: shape, pad: [(0, 0); 2], window: size, channels: shape.c });
    }
    let out = NhwcShape { n: shape.n, h: oh, w: ow, c: shape.c };
    let (rows, cols) = (taps(oh, shape.h), taps(ow, shape.w));
    let c = shape.c;
    let line = ow * c;
    let per_task = lines_per_task(out.n * oh);
    let mut output = vec![0f32; out.elements()];
    output.par_chunks_mut((per_task * line).max(1)).enumerate().for_each(|(task, lines)| {
        for (offset, dst_line) in lines.chunks_exact_mut(line).enumerate() {
            let index = task * per_task + offset;
            let (b, y) = (index / oh, rows[index % oh]);
            let top = (b * shape.h + y.low) * shape.w;
            let bottom = (b * shape.h + y.high) * shape.w;
            for (x, dst) in cols.iter().zip(dst_line.chunks_exact_mut(c)) {
                let (tl, tr) = (&input[(top + x.low) * c..][..c], &input[(top + x.high) * c..][..c]);
                let (bl, br) = (&input[(bottom + x.low) * c..][..c], &input[(bottom + x.high) * c..][..c]);
                for i in 0..c {
                    let upper = tl[i] + (tr[i] - tl[i]) * x.lerp;
                    let lower = bl[i] + (br[i] - bl[i]) * x.lerp;
                    dst[i] = upper + (lower - upper) * y.lerp;
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
    fn doubling_interpolates_between_neighbours() {
        // 1×2 → 1×4 (one channel): half-pixel centres put the outputs at -0.25, 0.25,
        // 0.75 and 1.25 in input coordinates, clamped at the borders.
        let (got, out) = resize_bilinear(&[1.0, 3.0], NhwcShape { n: 1, h: 1, w: 2, c: 1 }, [1, 4]).unwrap();
        assert_eq!(out, NhwcShape { n: 1, h: 1, w: 4, c: 1 });
        assert_eq!(got, vec![1.0, 1.5, 2.5, 3.0]);
    }

    #[test]
    fn same_size_is_the_identity_and_channels_stay_apart() {
        let shape = NhwcShape { n: 2, h: 5, w: 3, c: 4 };
        let input = values(shape.elements(), 11);
        let (got, _) = resize_bilinear(&input, shape, [5, 3]).unwrap();
        assert_eq!(got, input);
    }

    #[test]
    fn separable_against_one_dimensional_resizes() {
        // Bilinear = linear in y of linear in x: check a 3×4 → 6×7 resize against that.
        let shape = NhwcShape { n: 1, h: 3, w: 4, c: 2 };
        let input = values(shape.elements(), 5);
        let (got, _) = resize_bilinear(&input, shape, [6, 7]).unwrap();
        let (rows, cols) = (taps(6, 3), taps(7, 4));
        let at = |y: usize, x: usize, ch: usize| input[(y * 4 + x) * 2 + ch];
        for (oy, r) in rows.iter().enumerate() {
            for (ox, t) in cols.iter().enumerate() {
                for ch in 0..2 {
                    let line = |y| at(y, t.low, ch) + (at(y, t.high, ch) - at(y, t.low, ch)) * t.lerp;
                    let want = line(r.low) + (line(r.high) - line(r.low)) * r.lerp;
                    assert!((got[(oy * 7 + ox) * 2 + ch] - want).abs() < 1e-6);
                }
            }
        }
    }
}
