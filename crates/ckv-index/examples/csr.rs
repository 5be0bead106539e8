//! The CSR cluster index of one KV head, grown the way a decode pipeline grows it: the
//! prompt's keys after the sink are clustered and appended, then a full tail window of
//! decoded tokens is clustered on its own and appended after them. Prints the CSR arrays
//! (sizes, offsets, members) and the centroids as a `[C, d]` view.
//!
//! Run: `cargo run -p ckv-index --example csr`.

use ckv_cluster::{ClusterParams, Init, ParamGuard, kmeans_view};
use ckv_index::ClusterIndex;
use ndarray::Array2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (d, sink, prompt, window) = (4, 4, 36, 12);
    // Keys pointing along one of the four axes (token t along axis t % 4, its norm varying).
    let key =
        |t: usize, j: usize| if j == t % 4 { 1.0 + (t % 7) as f32 / 7.0 } else { 0.05 * (t % 3) as f32 };
    let keys = Array2::from_shape_fn((prompt + window, d), |(t, j)| key(t, j));

    let mut index = ClusterIndex::new(d)?;
    // The prompt's clustered region [sink, prompt): 32 tokens into 4 clusters.
    let params = ClusterParams::new(4).seed(1).init(Init::PlusPlus).validate()?;
    let first = kmeans_view(&params, keys.slice(ndarray::s![sink..prompt, ..]))?;
    index.append(&first, sink as u32)?;
    // One decode window [prompt, prompt + window): 12 tokens into 2 new clusters.
    let params = ClusterParams::new(2).seed(2).init(Init::PlusPlus).validate()?;
    let second = kmeans_view(&params, keys.slice(ndarray::s![prompt.., ..]))?;
    index.append(&second, prompt as u32)?;

    println!("{} clusters over {} tokens, d = {}", index.n_clusters(), index.n_tokens(), index.d());
    println!("sizes   {:?}", index.sizes());
    println!("offsets {:?}", index.offsets());
    println!("members {:?}", index.members());
    let centroids = index.centroids_view();
    for c in 0..index.n_clusters() {
        let row: Vec<String> = centroids.row(c).iter().map(|v| format!("{v:.2}")).collect();
        println!("cluster {c}: centroid [{}], tokens {:?}", row.join(", "), index.members_of(c));
    }
    println!(
        "centroids {:?} f32 and {:?} f16; {} bytes held",
        centroids.dim(),
        index.centroids_f16_view().dim(),
        index.memory_bytes()
    );
    Ok(())
}
