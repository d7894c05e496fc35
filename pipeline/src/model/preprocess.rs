//! Bytes → model input: decode under explicit limits, RGB8, resize to 416×416, /255, CHW.

use std::io::Cursor;

use image::{imageops::FilterType, ImageReader, Limits};
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

/// Decodes to RGB8, checking the header's dimensions against `limits` first.
pub fn decode_rgb8(bytes: &[u8], limits: &DecodeLimits) -> Result<image::RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if reader.format().is_none() {
        return Err(DecodeError::UnknownFormat);
    }
    let (width, height) = reader.into_dimensions().map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let pixels = u64::from(width) * u64::from(height);
    if width > limits.max_dimension_px || height > limits.max_dimension_px || pixels > limits.max_pixels {
        return Err(DecodeError::TooLarge { width, height, pixels, max_pixels: limits.max_pixels });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let mut image_limits = Limits::default();
    image_limits.max_image_width = Some(limits.max_dimension_px);
    image_limits.max_image_height = Some(limits.max_dimension_px);
    image_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(image_limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(l) => DecodeError::Corrupt(format!("decoder limit reached: {l}")),
        other => DecodeError::Corrupt(other.to_string()),
    })?;
    Ok(image.into_rgb8())
}

/// Triangle-filter resize to 416×416 and planar /255 conversion.
pub fn resize_to_input(rgb: &image::RgbImage) -> DecodedFrame {
    let (width, height) = rgb.dimensions();
    let resized = image::imageops::resize(rgb, INPUT_SIZE, INPUT_SIZE, FilterType::Triangle);
    let plane = (INPUT_SIZE * INPUT_SIZE) as usize;
    let mut chw = vec![0f32; 3 * plane];
    for (i, px) in resized.pixels().enumerate() {
        chw[i] = f32::from(px[0]) / 255.0;
        chw[plane + i] = f32::from(px[1]) / 255.0;
        chw[2 * plane + i] = f32::from(px[2]) / 255.0;
    }
    DecodedFrame { width, height, chw }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PNG whose IHDR claims 50000×50000: refused from the header, nothing allocated.
    fn png_header_claiming(width: u32, height: u32) -> Vec<u8> {
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&ihdr);
        let crc = crc32(&chunk);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&(ihdr.len() as u32).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc.to_be_bytes());
        png
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn refuses_decompression_bomb_from_header() {
        let err = decode_image(&png_header_claiming(50_000, 50_000), &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { width: 50_000, height: 50_000, .. }), "{err:?}");
        assert_eq!(err.kind(), "too_large");
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
}
