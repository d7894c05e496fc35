//! Draws labelled boxes onto an image for `detect-image --annotate`.

use image::{Rgb, RgbImage};

use super::font::{render, GLYPH_H, GLYPH_W};
use vigil::model::Detection;

const SCALE: u32 = 2;

/// A distinct, stable colour per class.
fn colour(class_id: u32) -> Rgb<u8> {
    const PALETTE: [[u8; 3]; 8] = [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
    ];
    Rgb(PALETTE[class_id as usize % PALETTE.len()])
}

pub(super) fn draw(image: &mut RgbImage, detections: &[Detection]) {
    for d in detections {
        let c = colour(d.class_id);
        let (w, h) = (image.width() as i64, image.height() as i64);
        let clamp = |v: f32, max: i64| (v.round() as i64).clamp(0, max - 1);
        let (x0, y0, x1, y1) = (clamp(d.bbox[0], w), clamp(d.bbox[1], h), clamp(d.bbox[2], w), clamp(d.bbox[3], h));
        for t in 0..3 {
            for x in x0..=x1 {
                put(image, x, y0 + t, c);
                put(image, x, y1 - t, c);
            }
            for y in y0..=y1 {
                put(image, x0 + t, y, c);
                put(image, x1 - t, y, c);
            }
        }
        let text = format!("{} {:.2}", d.label, d.score);
        let (tw, th) = ((text.len() as u32 * GLYPH_W + 2) * SCALE, (GLYPH_H + 1) * SCALE);
        let top = (y0 - th as i64).max(0);
        for y in top..top + th as i64 {
            for x in x0..x0 + tw as i64 {
                put(image, x, y, c);
            }
        }
        render(&text, |gx, gy| {
            for dy in 0..SCALE {
                for dx in 0..SCALE {
                    let x = x0 + i64::from((gx + 1) * SCALE + dx);
                    let y = top + i64::from((gy + 1) * SCALE + dy);
                    put(image, x, y, Rgb([255, 255, 255]));
                }
            }
        });
    }
}

fn put(image: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && x < i64::from(image.width()) && y < i64::from(image.height()) {
        image.put_pixel(x as u32, y as u32, c);
    }
}
