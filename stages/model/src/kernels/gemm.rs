//! A bounds-checked front for the `gemm` crate's matrix product (the kernel candle itself uses
//! on the CPU). The only `unsafe` of the CPU kernels is here: the raw-pointer call, after
//! checking that every element the strides reach lies inside its slice.
#![allow(unsafe_code)]

/// A read-only strided view of a matrix: element (r, c) is `data[r * rs + c * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Distance between rows.
    pub rs: usize,
    /// Distance between columns.
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst = a · b` (or `dst += a · b` with `accumulate`), `dst` row-major `a.rows × b.cols`.
/// `threads > 1` lets the kernel split the product over the rayon pool.
///
/// # Panics
/// Mismatched shapes or views that reach outside their slices (a bug in the caller).
pub fn matmul(dst: &mut [f32], a: View<'_>, b: View<'_>, accumulate: bool, threads: usize) {
    product(dst, (b.cols, 1), a, b, accumulate, threads);
}

/// As [`matmul`], with the rows of `dst` `ld ≥ b.cols` apart (a block of columns of a wider
/// row-major matrix).
///
/// # Panics
/// As [`matmul`].
pub fn matmul_ld(
    dst: &mut [f32],
    ld: usize,
    a: View<'_>,
    b: View<'_>,
    accumulate: bool,
    threads: usize,
) {
    assert!(ld >= b.cols, "destination rows overlap");
    product(dst, (ld, 1), a, b, accumulate, threads);
}

/// As [`matmul`], but `dst` column-major (it holds `(a · b)ᵀ` row-major). The kernel works on
/// column-major destinations; a row-major one makes it swap and transpose the operands, which
/// decides which operand it copies into its packed layout. Choosing the destination's layout
/// chooses that copy: for `dy · colsᵀ` (the weight gradient) a column-major destination packs
/// the thin `dy` instead of the column matrix, nine times larger for a 3×3 kernel.
///
/// # Panics
/// As [`matmul`].
pub fn matmul_col_major(
    dst: &mut [f32],
    a: View<'_>,
    b: View<'_>,
    accumulate: bool,
    threads: usize,
) {
    product(dst, (1, a.rows), a, b, accumulate, threads);
}

/// `dst = a · b` (or `+=`) with element (i, j) of `dst` at `i·rs + j·cs`.
fn product(
    dst: &mut [f32],
    (dst_rs, dst_cs): (usize, usize),
    a: View<'_>,
    b: View<'_>,
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions");
    assert!(
        m == 0 || n == 0 || (m - 1) * dst_rs + (n - 1) * dst_cs < dst.len(),
        "destination too small"
    );
    assert!(a.fits() && b.fits(), "views inside their slices");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[i * dst_rs + j * dst_cs] = 0.0;
                }
            }
        }
        return;
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assertion above checked that dst reaches its largest offset
    // (m − 1)·rs + (n − 1)·cs; `fits` checked that
    // the largest offsets of a and b are inside their slices; the three regions do not overlap
    // (dst is a unique borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: View<'_>, b: View<'_>) -> Vec<f32> {
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols)
                    .map(|p| a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs])
                    .sum();
            }
        }
        out
    }

    #[test]
    fn products_and_transposed_views_match_a_loop() {
        let a: Vec<f32> = (0..35).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..20).map(|i| (i % 5) as f32 * 0.5).collect();
        let (va, vb) = (View::row_major(&a, 5, 7), View::row_major(&b, 4, 5));
        // (5×7)ᵀ is 7×5; (4×5)ᵀ is 5×4: aᵀ·bᵀ is 7×4.
        let mut out = vec![0.0; 28];
        matmul(&mut out, va.t(), vb.t(), false, 1);
        assert_eq!(out, naive(va.t(), vb.t()));
        let twice: Vec<f32> = out.iter().map(|v| 2.0 * v).collect();
        matmul(&mut out, va.t(), vb.t(), true, 2);
        assert_eq!(out, twice);
        // Column-major destination: the transpose of the row-major result.
        let mut col = vec![0.0; 28];
        matmul_col_major(&mut col, va.t(), vb.t(), false, 1);
        for i in 0..7 {
            for j in 0..4 {
                assert_eq!(col[j * 7 + i], out[i * 4 + j] / 2.0);
            }
        }
        matmul_col_major(&mut col, va.t(), vb.t(), true, 2);
        assert_eq!(col[3 * 7 + 5], out[5 * 4 + 3]);
    }

    /// The shapes the convolutions use (thin and wide, with row strides, both destination
    /// layouts, accumulating or not, one and two threads) against a float64 loop: whichever
    /// kernel the CPU gets (AVX2, AVX-512) must give the product to float32 rounding.
    #[test]
    fn convolution_shaped_products_match_a_float64_loop() {
        let mut rng = simclr_core::Rng::from_key(&[17]);
        let shapes = [
            (16, 784, 144),
            (32, 196, 288),
            (128, 16, 1152),
            (17, 33, 65),
            (64, 49, 576),
            (3, 1000, 9),
            (256, 64, 128),
        ];
        for &(m, n, k) in &shapes {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
            let (va, vb) = (View::row_major(&a, m, k), View::row_major(&b, k, n));
            let exact: Vec<f64> = (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    (0..k)
                        .map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j]))
                        .sum()
                })
                .collect();
            let close = |got: f32, want: f64, what: &str| {
                let tol = 1e-4 * (k as f64).sqrt() * (1.0 + want.abs());
                assert!(
                    (f64::from(got) - want).abs() <= tol,
                    "{what} {m}×{k}·{k}×{n}: {got} against {want}"
                );
            };
            for threads in [1, 2] {
                let mut out = vec![0.0f32; m * n];
                matmul(&mut out, va, vb, false, threads);
                for (ij, &v) in out.iter().enumerate() {
                    close(v, exact[ij], "row-major");
                }
                // Accumulating into what is there.
                matmul(&mut out, va, vb, true, threads);
                for (ij, &v) in out.iter().enumerate() {
                    close(v, 2.0 * exact[ij], "accumulated");
                }
                // A block of columns of a wider matrix, and a column-major destination.
                let ld = n + 5;
                let mut wide = vec![7.0f32; m * ld];
                matmul_ld(&mut wide, ld, va, vb, false, threads);
                for i in 0..m {
                    for j in 0..n {
                        close(wide[i * ld + j], exact[i * n + j], "strided");
                    }
                    assert!(wide[i * ld + n..(i + 1) * ld].iter().all(|&v| v == 7.0));
                }
                let mut col = vec![0.0f32; m * n];
                matmul_col_major(&mut col, va, vb, false, threads);
                for i in 0..m {
                    for j in 0..n {
                        close(col[j * m + i], exact[i * n + j], "column-major");
                    }
                }
                // Transposed operands: (bᵀ·aᵀ) = (a·b)ᵀ.
                let mut t = vec![0.0f32; n * m];
                matmul(&mut t, vb.t(), va.t(), false, threads);
                for i in 0..m {
                    for j in 0..n {
                        close(t[j * m + i], exact[i * n + j], "transposed");
                    }
                }
            }
        }
    }
}
