//! The logistic function over an activation, vectorised.
//!
//! burn's sigmoid took ~1 ms a frame on the heads' class scores (80 channels split out of
//! 124, so a strided view, over 3,549 cells): a scalar `exp` per value. Here the values are
//! made contiguous once and `exp` is a polynomial the compiler vectorises.

use rayon::prelude::*;

/// Values per rayon task: small enough to spread the heads' 284,000 over the cores.
const CHUNK: usize = 16 * 1024;

/// `1 / (1 + e^-x)` over `input`.
pub(crate) fn sigmoid(input: &[f32]) -> Vec<f32> {
    let mut output = input.to_vec();
    output.par_chunks_mut(CHUNK).for_each(sigmoid_in_place);
    output
}

with_avx2! {
    fn sigmoid_in_place(values: &mut [f32]) => sigmoid_body
}

#[inline(always)]
fn sigmoid_body(values: &mut [f32]) {
    for v in values {
        *v = 1.0 / (1.0 + exp(-*v));
    }
}

/// `e^x` to within 2 ulp for x in [-87, 88] (Cephes' `expf`: x = n·ln 2 + r with
/// |r| ≤ ln 2 / 2, a degree-6 polynomial for e^r, and 2^n built in the exponent bits);
/// below the range it returns ~1e-38, above it ~1e38, never a NaN for finite input.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n · LN2_HIGH is exact.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 · 2^23 rounds to the nearest integer without `round`,
    // which baseline x86-64 lacks as a vector instruction.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    e_r * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library_across_the_range() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let (got, want) = (f64::from(exp(x)), f64::from(x).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "largest relative error {worst}");
    }

    #[test]
    fn sigmoid_matches_its_definition_and_saturates_cleanly() {
        let input: Vec<f32> = (-40_000..40_000).map(|i| i as f32 / 500.0).chain([-1e30, 1e30, 0.0]).collect();
        let got = sigmoid(&input);
        for (&x, &y) in input.iter().zip(&got) {
            let want = 1.0 / (1.0 + f64::from(-x).exp());
            assert!((f64::from(y) - want).abs() < 1e-7, "sigmoid({x}) = {y}, want {want}");
        }
        let [low, high, middle] = got[got.len() - 3..] else { unreachable!() };
        assert!((0.0..1e-37).contains(&low), "sigmoid(-1e30) = {low}");
        assert_eq!((high, middle), (1.0, 0.5));
    }
}
