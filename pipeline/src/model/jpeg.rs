//! JPEG pixels through libjpeg-turbo's decoder (ISLOW IDCT, fancy upsampling).
//!
//! The reference decodes with Pillow, which uses libjpeg-turbo; the `image` crate's
//! decoder differs by up to 3 levels per pixel, which moves raw outputs past the
//! 1e-3 parity bound. The `image` crate still sniffs the format and checks the header
//! against the limits before this runs. libjpeg treats damaged data as warnings and
//! fills in grey; here every warning is fatal, so a truncated frame is refused.

use std::ffi::c_int;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

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
        let mut started = decompress.rgb()?;
        let (width, height) = (started.width() as u32, started.height() as u32);
        let pixels = started.read_scanlines::<u8>()?;
        started.finish()?;
        Ok((width, height, pixels))
    }));
    match result {
        Ok(Ok(image)) => Ok(image),
        Ok(Err(e)) => Err(DecodeError::Corrupt(e.to_string())),
        Err(panic) => Err(DecodeError::Corrupt(panic_message(panic))),
    }
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
