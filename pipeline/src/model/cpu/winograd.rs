//! 3×3 stride-1 convolution by Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Three quarters of NanoDet-g's arithmetic is 3×3 stride-1 convolutions. Computed
//! directly, a 2×2 block of outputs costs 36 multiply-adds per input and output channel;
//! Winograd's transform needs 16. The 4×4 input tile under each 2×2 output block is
//! transformed (`V = Bᵀ d B`), multiplied elementwise by the filter transformed once at
//! load (`U = G g Gᵀ`), and transformed back (`Y = Aᵀ M A`). Summed over input channels,
//! the elementwise products are 16 independent GEMMs
//! `[tiles, cin] × [cin, cout]`, one per tile position, so the gemm crate still does the
//! heavy work, on 2.25× fewer FLOPs. The transforms only add and subtract (and halve, in
//! `G`), so the results match the direct convolution to float rounding.
//!
//! Three phases, each spread over the cores by rayon: the input transform (by rows of
//! tiles), the GEMMs (by tile position and block of tiles), and the output transform with
//! bias and LeakyReLU (by rows of tiles). Tiles are stored tile-major (`[tiles][16][c]`),
//! so the first and last phases work on contiguous memory; the GEMMs read and write their
//! position's rows with a stride.

use std::cell::RefCell;

use rayon::prelude::*;

use super::{bias_leaky, gemm_rows, NhwcShape};

/// Positions in a 4×4 transformed tile.
const POSITIONS: usize = 16;
/// Tiles per GEMM call: enough rows for the GEMM's micro-kernel to run at speed, few
/// enough that each position's work splits over the cores.
const BLOCK_TILES: usize = 128;

thread_local! {
    /// The calling thread's transformed input and product buffers, reused across calls.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// A 3×3 filter in Winograd form: `[16][cin][cout]`, each position's `[cin, cout]` matrix
/// row-major.
#[derive(Debug, Clone)]
pub(super) struct WinogradFilter {
    transformed: Vec<f32>,
    cin: usize,
    cout: usize,
}

impl WinogradFilter {
    /// `filter` is a TensorFlow HWIO 3×3 filter, `[3, 3, cin, cout]` row-major.
    pub(super) fn new(filter: &[f32], cin: usize, cout: usize) -> WinogradFilter {
        assert_eq!(filter.len(), 9 * cin * cout, "a 3×3 filter over {cin} → {cout} channels");
        // G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]
        const G: [[f32; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
        let mut transformed = vec![0f32; POSITIONS * cin * cout];
        for c in 0..cin {
            for o in 0..cout {
                let g = |y: usize, x: usize| filter[((y * 3 + x) * cin + c) * cout + o];
                for i in 0..4 {
                    for j in 0..4 {
                        let mut sum = 0f32;
                        for (a, ga) in G[i].iter().enumerate() {
                            for (b, gb) in G[j].iter().enumerate() {
                                sum += ga * g(a, b) * gb;
                            }
                        }
                        transformed[((i * 4 + j) * cin + c) * cout + o] = sum;
                    }
                }
            }
        }
        WinogradFilter { transformed, cin, cout }
    }

    /// Convolves the NHWC `input` (zero-padded by `pad`) into `output` (`out`'s shape),
    /// adding `bias` and applying LeakyReLU with `leaky_alpha` when given.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run(
        &self,
        input: &[f32],
        shape: NhwcShape,
        out: NhwcShape,
        pad: [(usize, usize); 2],
        bias: &[f32],
        leaky_alpha: Option<f32>,
        output: &mut [f32],
    ) {
        let grid = TileGrid { tiles_h: out.h.div_ceil(2), tiles_w: out.w.div_ceil(2) };
        let tiles = out.n * grid.tiles_h * grid.tiles_w;
        let (v_len, m_len) = (tiles * POSITIONS * self.cin, tiles * POSITIONS * self.cout);
        SCRATCH.with(|scratch| {
            // A nested call on the same thread (never expected) gets buffers of its own.
            let mut fresh = (Vec::new(), Vec::new());
            let mut borrowed = scratch.try_borrow_mut();
            let (v, m) = match borrowed.as_deref_mut() {
                Ok((v, m)) => (v, m),
                Err(_) => (&mut fresh.0, &mut fresh.1),
            };
            grow(v, v_len);
            grow(m, m_len);
            let (v, m) = (&mut v[..v_len], &mut m[..m_len]);
            self.transform_input(input, shape, pad, grid, v);
            self.multiply(v, m, tiles);
            self.transform_output(m, out, grid, bias, leaky_alpha, output);
        });
    }

    /// `V = Bᵀ d B` for every tile, into `v` (`[tiles][16][cin]`).
    fn transform_input(
        &self,
        input: &[f32],
        shape: NhwcShape,
        pad: [(usize, usize); 2],
        grid: TileGrid,
        v: &mut [f32],
    ) {
        let cin = self.cin;
        let zeros = vec![0f32; cin];
        let row_len = grid.tiles_w * POSITIONS * cin;
        v.par_chunks_mut(row_len).enumerate().for_each(|(tile_row, v_row)| {
            let mut rows = vec![0f32; POSITIONS * cin];
            let (b, ty) = (tile_row / grid.tiles_h, tile_row % grid.tiles_h);
            for (tx, tile) in v_row.chunks_exact_mut(POSITIONS * cin).enumerate() {
                // The 4×4 input pixels under this tile, zeros outside the image.
                let pixel = |a: usize, bx: usize| {
                    let y = (2 * ty + a).checked_sub(pad[0].0).filter(|&y| y < shape.h);
                    let x = (2 * tx + bx).checked_sub(pad[1].0).filter(|&x| x < shape.w);
                    match (y, x) {
                        (Some(y), Some(x)) => {
                            let at = ((b * shape.h + y) * shape.w + x) * cin;
                            &input[at..at + cin]
                        }
                        _ => &zeros[..],
                    }
                };
                let d: [[&[f32]; 4]; 4] = std::array::from_fn(|a| std::array::from_fn(|bx| pixel(a, bx)));
                input_tile(&d, tile, &mut rows, cin);
            }
        });
    }

    /// `M[k] = V[k] × U[k]` for the 16 positions `k`, in blocks of tiles.
    fn multiply(&self, v: &[f32], m: &mut [f32], tiles: usize) {
        let (cin, cout) = (self.cin, self.cout);
        let blocks = tiles.div_ceil(BLOCK_TILES);
        let m_ptr = SendPtr(m.as_mut_ptr());
        let v_ptr = SendPtr(v.as_ptr().cast_mut());
        (0..POSITIONS * blocks).into_par_iter().for_each(|task| {
            let (k, block) = (task % POSITIONS, task / POSITIONS);
            let first = block * BLOCK_TILES;
            let rows = BLOCK_TILES.min(tiles - first);
            let (m_ptr, v_ptr) = (&m_ptr, &v_ptr);
            // SAFETY: `v` is `[tiles][16][cin]` and `m` `[tiles][16][cout]`, so rows
            // `first..first + rows` of position `k` lie inside them at row strides 16·cin
            // and 16·cout; `transformed` holds position `k`'s `[cin, cout]` matrix. Tasks
            // write disjoint (tile, position) rows of `m`, and `v` is only read.
            unsafe {
                gemm_rows(
                    [rows, cout, cin],
                    (m_ptr.0.add((first * POSITIONS + k) * cout), POSITIONS * cout),
                    (v_ptr.0.add((first * POSITIONS + k) * cin), POSITIONS * cin),
                    (self.transformed.as_ptr().add(k * cin * cout), cout),
                );
            }
        });
    }

    /// `Y = Aᵀ M A` for every tile, plus bias and LeakyReLU, into the NHWC `output`.
    fn transform_output(
        &self,
        m: &[f32],
        out: NhwcShape,
        grid: TileGrid,
        bias: &[f32],
        leaky_alpha: Option<f32>,
        output: &mut [f32],
    ) {
        let cout = self.cout;
        let image_len = out.h * out.w * cout;
        for (b, image) in output.chunks_exact_mut(image_len).enumerate() {
            // A row of tiles writes two output rows (the last one only one when `out.h` is odd).
            image.par_chunks_mut(2 * out.w * cout).enumerate().for_each(|(ty, lines)| {
                let two_rows = lines.len() == 2 * out.w * cout;
                let (top, bottom) = lines.split_at_mut(out.w * cout);
                let mut bottom = two_rows.then_some(bottom);
                let tile_row = (b * grid.tiles_h + ty) * grid.tiles_w;
                let (mut y, mut rows) = (vec![0f32; 4 * cout], vec![0f32; 8 * cout]);
                for tx in 0..grid.tiles_w {
                    let tile = &m[(tile_row + tx) * POSITIONS * cout..][..POSITIONS * cout];
                    output_tile(tile, &mut y, &mut rows, cout);
                    let (x0, wide) = (2 * tx * cout, 2 * tx + 1 < out.w);
                    let store = |dst: &mut [f32], k: usize| {
                        dst.copy_from_slice(&y[k * cout..(k + 1) * cout]);
                        bias_leaky(dst, bias, leaky_alpha);
                    };
                    store(&mut top[x0..x0 + cout], 0);
                    if wide {
                        store(&mut top[x0 + cout..x0 + 2 * cout], 1);
                    }
                    if let Some(bottom) = bottom.as_deref_mut() {
                        store(&mut bottom[x0..x0 + cout], 2);
                        if wide {
                            store(&mut bottom[x0 + cout..x0 + 2 * cout], 3);
                        }
                    }
                }
            });
        }
    }
}

#[derive(Clone, Copy)]
struct TileGrid {
    tiles_h: usize,
    tiles_w: usize,
}

/// A raw pointer the GEMM tasks share; each task touches only its own rows.
struct SendPtr(*mut f32);
// SAFETY: see `multiply`: concurrent tasks write disjoint elements and only read `v`.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

fn grow(buffer: &mut Vec<f32>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
}

with_avx2! {
    /// `V = Bᵀ d B` with `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`,
    /// for all channels at once. `d` holds the 4×4 input pixels, `tile` receives `[16][cin]`,
    /// `rows` is scratch of the same size.
    fn input_tile(d: &[[&[f32]; 4]; 4], tile: &mut [f32], rows: &mut [f32], cin: usize) => input_tile_body
}

/// Each step below is a whole-slice operation: one loop over channels with two inputs
/// and no aliasing, which the compiler turns into vector code. (A single loop over
/// channels reading 16 pixels did not vectorise.)
#[inline(always)]
#[allow(clippy::needless_range_loop)] // column x of a 4×4 matrix of slices reads clearest as d[i][x]
fn input_tile_body(d: &[[&[f32]; 4]; 4], tile: &mut [f32], rows: &mut [f32], cin: usize) {
    // rows[i][x] = (Bᵀ d)[i][x]
    for x in 0..4 {
        let (d0, d1, d2, d3) = (d[0][x], d[1][x], d[2][x], d[3][x]);
        sub(plane(rows, x, cin), d0, d2);
        add(plane(rows, 4 + x, cin), d1, d2);
        sub(plane(rows, 8 + x, cin), d2, d1);
        sub(plane(rows, 12 + x, cin), d1, d3);
    }
    // tile[i][j] = (rows B)[i][j]
    for i in 0..4 {
        let r = |x: usize| &rows[(4 * i + x) * cin..][..cin];
        sub(plane(tile, 4 * i, cin), r(0), r(2));
        add(plane(tile, 4 * i + 1, cin), r(1), r(2));
        sub(plane(tile, 4 * i + 2, cin), r(2), r(1));
        sub(plane(tile, 4 * i + 3, cin), r(1), r(3));
    }
}

with_avx2! {
    /// `Y = Aᵀ M A` with `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`, for all channels at once.
    /// `tile` is `[16][cout]`; `y` receives the 2×2 outputs row-major, `[4][cout]`;
    /// `rows` is `[8][cout]` scratch.
    fn output_tile(tile: &[f32], y: &mut [f32], rows: &mut [f32], cout: usize) => output_tile_body
}

#[inline(always)]
fn output_tile_body(tile: &[f32], y: &mut [f32], rows: &mut [f32], cout: usize) {
    let m = |k: usize| &tile[k * cout..][..cout];
    // rows[p][j] = (Aᵀ M)[p][j]
    for j in 0..4 {
        add_sub(plane(rows, j, cout), m(j), m(4 + j), m(8 + j), 1.0);
        add_sub(plane(rows, 4 + j, cout), m(4 + j), m(8 + j), m(12 + j), -1.0);
    }
    // y[p][q] = (rows A)[p][q]
    for p in 0..2 {
        let r = |j: usize| &rows[(4 * p + j) * cout..][..cout];
        add_sub(plane(y, 2 * p, cout), r(0), r(1), r(2), 1.0);
        add_sub(plane(y, 2 * p + 1, cout), r(1), r(2), r(3), -1.0);
    }
}

/// Plane `k` of a `[planes][len]` buffer.
#[inline(always)]
fn plane(buffer: &mut [f32], k: usize, len: usize) -> &mut [f32] {
    &mut buffer[k * len..][..len]
}

#[inline(always)]
fn add(dst: &mut [f32], a: &[f32], b: &[f32]) {
    for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
        *d = a + b;
    }
}

#[inline(always)]
fn sub(dst: &mut [f32], a: &[f32], b: &[f32]) {
    for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
        *d = a - b;
    }
}

/// `dst = a + sign·b + sign·c`: `a + b + c` or `a − b − c`.
#[inline(always)]
fn add_sub(dst: &mut [f32], a: &[f32], b: &[f32], c: &[f32], sign: f32) {
    if sign > 0.0 {
        for (((d, &a), &b), &c) in dst.iter_mut().zip(a).zip(b).zip(c) {
            *d = a + b + c;
        }
    } else {
        for (((d, &a), &b), &c) in dst.iter_mut().zip(a).zip(b).zip(c) {
            *d = a - b - c;
        }
    }
}
