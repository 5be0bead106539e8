//! Spherical-assignment k-means over key rows: the driver loop and the public entry points.

mod assign;
mod init;
mod normalize;
mod update;
mod validate;

use ndarray::{ArrayView2, ArrayView3};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::clustering::Clustering;
use crate::error::ClusterError;
use crate::params::ValidClusterParams;
use ckv_core::{Element, standard_slice};

use assign::{assign, objective};
use normalize::normalize_rows;
use update::{UpdateScratch, update};

/// Elements per parallel task when converting the input to `f32`.
const CONVERT_CHUNK: usize = 1 << 16;

/// k-means of `rows` (`[n, d]` row-major) into `params.n_clusters()` clusters.
///
/// Rows are assigned to the centroid of highest cosine similarity (ties to the lower cluster
/// id; zero rows and zero centroids have similarity 0 with everything), and every non-empty
/// centroid is updated to the mean of its members' raw rows. Initial centroids are `k`
/// distinct rows chosen with `ChaCha8Rng::seed_from_u64(seed)`, uniformly or by k-means++ in
/// cosine space as [`params.init()`](ValidClusterParams::init) says (see [`Init`](crate::Init)). The loop runs until no label
/// changes or `max_iters` update + re-assignment rounds were done; the returned centroids are
/// always the means of the returned members (empty clusters keep their previous centroid).
/// See [`Clustering`] for the objective.
///
/// The result is bitwise identical for the same input and seed, whatever the number of rayon
/// threads.
///
/// # Errors
/// Checked in this order, before any clustering work:
/// [`ClusterError::Param`] (name `"d"`) if `d == 0`, [`ClusterError::ShapeMismatch`] if
/// `rows.len()` is not a multiple of `d`, [`ClusterError::Param`] (name `"rows"`) if there are
/// more than `u32::MAX` rows, [`ClusterError::NonFinite`] for the first NaN or infinity in
/// row-major order, [`ClusterError::TooFewRows`] if there are fewer rows than clusters.
pub fn kmeans<E: Element>(
    params: &ValidClusterParams,
    rows: &[E],
    d: usize,
) -> Result<Clustering, ClusterError> {
    let n = validate::check_rows(rows, d, params.n_clusters())?;
    Ok(run(params, rows, n, d))
}

/// [`kmeans`] for several heads at once (in parallel over heads); results are in input order.
/// Heads may have different numbers of rows but share `d` and `params`.
///
/// # Errors
/// If any head is invalid (see [`kmeans`]), the error of the lowest-index invalid head; all
/// heads are checked before any clustering work.
pub fn kmeans_heads<E: Element>(
    params: &ValidClusterParams,
    heads: &[&[E]],
    d: usize,
) -> Result<Vec<Clustering>, ClusterError> {
    let checked: Vec<Result<usize, ClusterError>> =
        heads.par_iter().map(|rows| validate::check_rows(rows, d, params.n_clusters())).collect();
    let ns = checked.into_iter().collect::<Result<Vec<usize>, _>>()?;
    Ok(heads.par_iter().zip(ns).map(|(rows, n)| run(params, rows, n, d)).collect())
}

/// [`kmeans`] of the key rows of one head as an `ndarray` view `[n, d]`: the same result,
/// bitwise, as `kmeans(params, keys.as_slice().unwrap(), d)`; nothing is copied.
///
/// ```
/// use ckv_cluster::{ClusterParams, kmeans_view};
/// use ckv_core::ParamGuard;
/// use ndarray::Array2;
///
/// let keys = Array2::from_shape_fn((64, 8), |(i, j)| ((i * 8 + j) as f32 * 0.37).sin());
/// let params = ClusterParams::new(4).seed(1).validate()?;
/// let c = kmeans_view(&params, keys.view())?;
/// assert_eq!((c.n_rows(), c.n_clusters(), c.d()), (64, 4, 8));
/// // A strided view (every other row) is refused, not copied.
/// let strided = keys.slice(ndarray::s![..;2, ..]);
/// assert!(matches!(kmeans_view(&params, strided), Err(ckv_cluster::ClusterError::Value(_))));
/// # Ok::<(), ckv_cluster::ClusterError>(())
/// ```
///
/// # Errors
/// [`ClusterError::Value`] ([`ValueError::NotContiguous`](ckv_core::ValueError::NotContiguous), naming the shape and strides) if
/// `keys` is not in standard (row-major, contiguous) layout; then the errors of [`kmeans`].
pub fn kmeans_view<E: Element>(
    params: &ValidClusterParams,
    keys: ArrayView2<'_, E>,
) -> Result<Clustering, ClusterError> {
    let d = keys.ncols();
    kmeans(params, standard_slice("keys", &keys)?, d)
}

/// [`kmeans_heads`] of the key rows of `H` heads as one head-major `ndarray` view
/// `[H, n, d]` (every head has `n` rows); results are in head order, bitwise those of
/// [`kmeans_heads`] on the heads' slices. Nothing is copied.
///
/// # Errors
/// [`ClusterError::Value`] ([`ValueError::NotContiguous`](ckv_core::ValueError::NotContiguous)) if `keys` is not in standard
/// layout (a token-major `[P, Hkv, d]` array must be made head-major first); then the errors
/// of [`kmeans_heads`].
pub fn kmeans_heads_view<E: Element>(
    params: &ValidClusterParams,
    keys: ArrayView3<'_, E>,
) -> Result<Vec<Clustering>, ClusterError> {
    let (heads, n, d) = keys.dim();
    let all = standard_slice("keys", &keys)?;
    let per_head = n * d;
    let rows: Vec<&[E]> = (0..heads).map(|h| &all[h * per_head..(h + 1) * per_head]).collect();
    kmeans_heads(params, &rows, d)
}

/// Converts the (validated) rows to `f32` and clusters them.
fn run<E: Element>(params: &ValidClusterParams, rows: &[E], n: usize, d: usize) -> Clustering {
    let mut x = vec![0.0f32; rows.len()];
    x.par_chunks_mut(CONVERT_CHUNK)
        .zip(rows.par_chunks(CONVERT_CHUNK))
        .for_each(|(dst, src)| E::to_f32_slice(src, dst));
    lloyd(params, &x, n, d)
}

/// The k-means loop on validated `f32` rows (`n >= k >= 1`, `d >= 1`, all finite).
fn lloyd(params: &ValidClusterParams, x: &[f32], n: usize, d: usize) -> Clustering {
    let k = params.n_clusters();
    debug_assert!(n >= k && k >= 1 && d >= 1 && x.len() == n * d);

    let mut xn = vec![0.0f32; n * d];
    normalize_rows(x, &mut xn, d);

    // Initial centroids: k distinct rows, in the order chosen.
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed());
    let mut centroids = vec![0.0f32; k * d];
    let initial = init::initial_rows(params.init(), &xn, n, d, k, &mut rng);
    for (c, &i) in centroids.chunks_exact_mut(d).zip(&initial) {
        c.copy_from_slice(&x[i * d..(i + 1) * d]);
    }
    let mut cn = vec![0.0f32; k * d];
    normalize_rows(&centroids, &mut cn, d);

    let mut labels = vec![u32::MAX; n];
    let mut sizes = vec![0u32; k];
    let mut scratch = UpdateScratch::new(n, k);
    let mut objective_history = Vec::with_capacity(params.max_iters().min(1 << 10) + 1);

    let first = assign(x, &xn, &cn, d, &mut labels);
    objective_history.push(first.objective);
    // Labels changed since the last update (the initial assignment sets all of them).
    let mut dirty = true;
    let mut iterations = 0;
    while dirty && iterations < params.max_iters() {
        update(x, d, &labels, &mut centroids, &mut sizes, &mut scratch);
        normalize_rows(&centroids, &mut cn, d);
        let step = assign(x, &xn, &cn, d, &mut labels);
        objective_history.push(step.objective);
        iterations += 1;
        dirty = step.changed > 0;
    }
    let final_objective = if dirty {
        // Make the returned centroids (and sizes) those of the returned labels.
        update(x, d, &labels, &mut centroids, &mut sizes, &mut scratch);
        normalize_rows(&centroids, &mut cn, d);
        objective(x, &cn, d, &labels)
    } else {
        *objective_history.last().expect("history has the initial entry")
    };

    Clustering::from_kmeans(d, labels, centroids, sizes, iterations, final_objective, objective_history)
}
