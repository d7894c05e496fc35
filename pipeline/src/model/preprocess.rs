//! Bytes → model input: decode under explicit limits, RGB8 as displayed (EXIF orientation
//! applied), resize to 416×416, /255, CHW.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use serde::{Deserialize, Serialize};

use super::DecodeError;

/// Side of the square network input, fixed by the NanoDet-g graph.
pub const INPUT_SIZE: u32 = 416;

/// Bounds applied before any pixel buffer is allocated, so a 50000×50000 header
/// (a decompression bomb) is refused from its header alone.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeLimits {
    /// Largest accepted width or height, in pixels.
    pub max_dimension_px: u32,
    /// Largest accepted width × height.
    pub max_pixels: u64,
    /// Largest allocation the decoder may make, in bytes.
    pub max_alloc_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // 8K UHD fits; anything larger is not a camera frame we expect.
        Self { max_dimension_px: 8192, max_pixels: 40_000_000, max_alloc_bytes: 512 * 1024 * 1024 }
    }
}

/// A frame ready for the network: original size (to scale boxes back) and the
/// normalised 3×416×416 planar RGB input.
#[derive(Debug, Clone)]
pub struct DecodedFrame {
    pub width: u32,
    pub height: u32,
    /// `[3, 416, 416]` row-major, values in 0..=1.
    pub chw: Vec<f32>,
}

/// Decodes and resizes one image exactly as the reference does (RGB8, triangle filter,
/// no letterbox). Errors describe the input, never panic.
pub fn decode_image(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedFrame, DecodeError> {
    let rgb = decode_rgb8(bytes, limits)?;
    Ok(resize_to_input(&rgb))
}

/// Decodes to RGB8, checking the header's dimensions against `limits` first. JPEG
/// pixels come from libjpeg-turbo (see `jpeg.rs`), other formats from the `image` crate.
///
/// The image is returned as it is displayed: an EXIF orientation (phones store portrait
/// photos as landscape pixels plus a tag) is applied, so the model sees people upright
/// and boxes are in the coordinates of the image a viewer shows. The reference decodes
/// with Pillow's `Image.open`, which ignores the tag; parity is only defined for frames
/// without one. A malformed EXIF block is ignored rather than the frame refused.
pub fn decode_rgb8(bytes: &[u8], limits: &DecodeLimits) -> Result<image::RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let reader =
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err(DecodeError::UnknownFormat);
    };
    let mut decoder = reader.into_decoder().map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if width > limits.max_dimension_px || height > limits.max_dimension_px || pixels > limits.max_pixels {
        return Err(DecodeError::TooLarge {
            width,
            height,
            pixels,
            max_pixels: limits.max_pixels,
            max_dimension_px: limits.max_dimension_px,
        });
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = if format == ImageFormat::Jpeg {
        let (w, h, pixels) = super::jpeg::decode_rgb(bytes)?;
        DynamicImage::ImageRgb8(
            image::RgbImage::from_raw(w, h, pixels)
                .ok_or_else(|| DecodeError::Corrupt("JPEG decoder returned a short image".into()))?,
        )
    } else {
        let mut image_limits = Limits::default();
        image_limits.max_image_width = Some(limits.max_dimension_px);
        image_limits.max_image_height = Some(limits.max_dimension_px);
        image_limits.max_alloc = Some(limits.max_alloc_bytes);
        // `set_limits` checks the dimensions only: the output buffer is reserved against
        // `max_alloc` here, as `ImageReader::decode` does.
        let decoded = image_limits
            .reserve(decoder.total_bytes())
            .and_then(|()| decoder.set_limits(image_limits))
            .and_then(|()| DynamicImage::from_decoder(decoder));
        decoded.map_err(|e| match e {
            image::ImageError::Limits(l) => DecodeError::Corrupt(format!("decoder limit reached: {l}")),
            other => DecodeError::Corrupt(other.to_string()),
        })?
    };
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// Resize to 416×416 and planar /255 conversion.
pub fn resize_to_input(rgb: &image::RgbImage) -> DecodedFrame {
    let (width, height) = rgb.dimensions();
    let side = INPUT_SIZE as usize;
    let resized = resize_bilinear(rgb.as_raw(), width as usize, height as usize, side, side);
    let plane = side * side;
    let mut chw = vec![0f32; 3 * plane];
    for (i, px) in resized.chunks_exact(3).enumerate() {
        chw[i] = f32::from(px[0]) / 255.0;
        chw[plane + i] = f32::from(px[1]) / 255.0;
        chw[2 * plane + i] = f32::from(px[2]) / 255.0;
    }
    DecodedFrame { width, height, chw }
}

/// Fixed-point precision of the resampling weights (as in Pillow: 32 − 8 − 2 bits).
const PRECISION_BITS: u32 = 22;

/// Separable triangle-filter resampling of packed RGB8, bit-exact with Pillow's
/// `Image.resize(…, BILINEAR)` (the reference's pre-processing): the filter support
/// widens by the scale when shrinking, weights are rounded to fixed point, and the
/// horizontal pass is rounded to 8 bits before the vertical one. The `image` crate's
/// triangle filter differs by up to 2 levels, enough to move raw outputs by 4e-3.
pub(super) fn resize_bilinear(src: &[u8], width: usize, height: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    let horizontal = weights(width, out_w);
    let mut rows = vec![0u8; height * out_w * 3];
    for y in 0..height {
        let line = &src[y * width * 3..(y + 1) * width * 3];
        for (x, (start, k)) in horizontal.iter().enumerate() {
            for c in 0..3 {
                let acc = k.iter().enumerate().fold(1i64 << (PRECISION_BITS - 1), |acc, (i, &w)| {
                    acc + i64::from(line[(start + i) * 3 + c]) * i64::from(w)
                });
                rows[(y * out_w + x) * 3 + c] = clip8(acc);
            }
        }
    }
    let vertical = weights(height, out_h);
    let mut out = vec![0u8; out_h * out_w * 3];
    for (y, (start, k)) in vertical.iter().enumerate() {
        for i in 0..out_w * 3 {
            let acc = k.iter().enumerate().fold(1i64 << (PRECISION_BITS - 1), |acc, (j, &w)| {
                acc + i64::from(rows[(start + j) * out_w * 3 + i]) * i64::from(w)
            });
            out[y * out_w * 3 + i] = clip8(acc);
        }
    }
    out
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// For each output pixel: the first input pixel used and the fixed-point weights.
fn weights(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // the triangle filter's support is 1
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let min = ((center - support + 0.5) as i64).max(0) as usize;
            let max = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (min..max)
                .map(|x| {
                    let d = ((x as f64 - center + 0.5) / filter_scale).abs();
                    if d < 1.0 {
                        1.0 - d
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w } * f64::from(1u32 << PRECISION_BITS);
                    (if w < 0.0 { w - 0.5 } else { w + 0.5 }) as i32
                })
                .collect();
            (min, fixed)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_decompression_bomb_from_header() {
        let err = decode_image(&crate::testing::png_bomb(50_000, 50_000), &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { width: 50_000, height: 50_000, .. }), "{err:?}");
        assert_eq!(err.kind(), "too_large");
    }

    #[test]
    fn max_alloc_bounds_the_decoded_image_of_every_format() {
        let mut png = Vec::new();
        image::RgbImage::from_pixel(100, 100, image::Rgb([1, 2, 3]))
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let tight = DecodeLimits { max_alloc_bytes: 10_000, ..DecodeLimits::default() };
        let err = decode_rgb8(&png, &tight).unwrap_err();
        assert!(err.to_string().contains("limit"), "30 kB of pixels past a 10 kB limit: {err}");
        assert!(decode_rgb8(&png, &DecodeLimits::default()).is_ok());
    }

    #[test]
    fn classifies_bad_inputs() {
        let limits = DecodeLimits::default();
        assert_eq!(decode_image(b"", &limits).unwrap_err().kind(), "empty");
        assert_eq!(decode_image(b"definitely not an image", &limits).unwrap_err().kind(), "unknown_format");
        let mut truncated = Vec::new();
        image::RgbImage::from_pixel(64, 48, image::Rgb([10, 200, 30]))
            .write_to(&mut Cursor::new(&mut truncated), image::ImageFormat::Jpeg)
            .unwrap();
        truncated.truncate(truncated.len() / 3);
        assert_eq!(decode_image(&truncated, &limits).unwrap_err().kind(), "corrupt_image");
    }

    #[test]
    fn resizes_to_planar_unit_range() {
        let mut png = Vec::new();
        image::RgbImage::from_pixel(100, 50, image::Rgb([255, 0, 51]))
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let frame = decode_image(&png, &DecodeLimits::default()).unwrap();
        assert_eq!((frame.width, frame.height), (100, 50));
        let plane = (INPUT_SIZE * INPUT_SIZE) as usize;
        assert_eq!(frame.chw.len(), 3 * plane);
        assert!((frame.chw[0] - 1.0).abs() < 1e-6);
        assert!(frame.chw[plane].abs() < 1e-6);
        assert!((frame.chw[2 * plane] - 0.2).abs() < 1e-6);
    }

    #[test]
    fn resize_matches_pillow_on_a_gradient() {
        // Pillow 13: Image.frombytes("RGB", (5, 3), bytes(range(45))).resize((2, 2), Image.BILINEAR)
        let src: Vec<u8> = (0..45).collect();
        let out = resize_bilinear(&src, 5, 3, 2, 2);
        assert_eq!(out, PILLOW_5X3_TO_2X2);
    }

    const PILLOW_5X3_TO_2X2: [u8; 12] = [9, 10, 11, 15, 16, 17, 27, 28, 29, 33, 34, 35];
}
