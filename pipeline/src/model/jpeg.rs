//! JPEG pixels through libjpeg-turbo's decoder (ISLOW IDCT, fancy upsampling).
//!
//! The reference decodes with Pillow, which uses libjpeg-turbo; the `image` crate's
//! decoder differs by up to 3 levels per pixel, which moves raw outputs past the
//! 1e-3 parity bound. The `image` crate still sniffs the format and checks the header
//! against the limits before this runs. libjpeg treats damaged data as warnings and
//! fills in grey; here every warning is fatal, so a truncated frame is refused.
//!
//! CMYK and YCCK JPEGs (print and scanning workflows, Photoshop) cannot be converted to
//! RGB by libjpeg ("Unsupported color conversion request"): they are decoded to CMYK and
//! converted here as Pillow converts them.

use std::ffi::c_int;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use mozjpeg::ColorSpace;
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, jpeg_std_error};

use super::DecodeError;

/// Decodes `bytes` to packed RGB8: `(width, height, pixels)`.
pub(super) fn decode_rgb(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), DecodeError> {
    let result = catch_unwind(AssertUnwindSafe(|| -> std::io::Result<(u32, u32, Vec<u8>)> {
        // SAFETY: jpeg_std_error fills every field of a zeroed error manager.
        let mut err: jpeg_error_mgr = unsafe { std::mem::zeroed() };
        unsafe { jpeg_std_error(&mut err) };
        err.error_exit = Some(fail);
        err.emit_message = Some(warn_is_fatal);
        let decompress = mozjpeg::decompress::DecompressBuilder::new().with_err(err).from_mem(bytes)?;
        let cmyk = matches!(decompress.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK);
        let mut started = decompress.to_colorspace(if cmyk { ColorSpace::JCS_CMYK } else { ColorSpace::JCS_RGB })?;
        let (width, height) = (started.width() as u32, started.height() as u32);
        let pixels = started.read_scanlines::<u8>()?;
        started.finish()?;
        Ok((width, height, if cmyk { adobe_cmyk_to_rgb(&pixels) } else { pixels }))
    }));
    match result {
        Ok(Ok(image)) => Ok(image),
        Ok(Err(e)) => Err(DecodeError::Corrupt(e.to_string())),
        Err(panic) => Err(DecodeError::Corrupt(panic_message(panic))),
    }
}

/// Packed CMYK as libjpeg returns it for CMYK and YCCK JPEGs, to packed RGB, exactly as
/// Pillow (the reference) shows such a JPEG. Pillow reads every CMYK JPEG with Adobe's
/// polarity, samples inverted (255 = no ink), whether or not an Adobe marker says so,
/// since Photoshop writes them that way and so does Pillow; then its `cmyk2rgb` gives
/// R = (255 − K) − C·(255 − K)/255, in its 8-bit fixed point (`MULDIV255`), likewise G
/// from M and B from Y. No ICC profile is applied (Pillow does not either).
fn adobe_cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let muldiv255 = |a: u8, b: u8| {
        let t = u32::from(a) * u32::from(b) + 128;
        (((t >> 8) + t) >> 8) as u8
    };
    cmyk.chunks_exact(4)
        .flat_map(|px| {
            let not_black = px[3]; // stored inverted: 255 − K
            [px[0], px[1], px[2]].map(|stored| not_black.saturating_sub(muldiv255(255 - stored, not_black)))
        })
        .collect()
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "JPEG decoder failed".into())
}

fn message(cinfo: &mut jpeg_common_struct) -> String {
    // SAFETY: libjpeg sets `err` before any callback; format_message writes at most
    // JMSG_LENGTH_MAX (200) bytes including the terminating NUL.
    unsafe {
        let mut buffer = [0u8; 200];
        match cinfo.err.as_ref().and_then(|e| e.format_message) {
            Some(format) => {
                let format: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &mut [u8; 200]) =
                    std::mem::transmute(format);
                format(cinfo, &mut buffer);
                let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
                String::from_utf8_lossy(&buffer[..end]).into_owned()
            }
            None => "JPEG decoder error".into(),
        }
    }
}

extern "C-unwind" fn fail(cinfo: &mut jpeg_common_struct) {
    resume_unwind(Box::new(message(cinfo)));
}

extern "C-unwind" fn warn_is_fatal(cinfo: &mut jpeg_common_struct, level: c_int) {
    if level < 0 {
        resume_unwind(Box::new(message(cinfo)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_converts_as_pillow_does() {
        // Pillow 13: Image.new("CMYK", (4, 1)) with these pixels, .convert("RGB"); stored
        // in a JPEG, each sample is inverted.
        let pillow = [
            ([0, 0, 0, 0], [255, 255, 255]),
            ([255, 0, 0, 0], [0, 255, 255]),
            ([100, 50, 200, 128], [77, 102, 27]),
            ([10, 20, 30, 255], [0, 0, 0]),
        ];
        for (cmyk, rgb) in pillow {
            let stored: Vec<u8> = cmyk.iter().map(|v| 255 - v).collect();
            assert_eq!(adobe_cmyk_to_rgb(&stored), rgb, "CMYK {cmyk:?}");
        }
    }
}
