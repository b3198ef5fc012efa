//! The check both server sources' sampled chunking must pass, whatever the server.

use signals_shared::ports::{KeyRange, SnapshotSource, SourceSpec};

/// Rows the check's table holds (keys `3, 6, 9, …`).
pub const SAMPLED_ROWS: usize = 250_000;

/// Cuts `table` (a key `id`, [`SAMPLED_ROWS`] rows) into chunks of 25,000 and checks they came
/// from a sample: about 9 ascending boundaries, chunks near the size asked, not all exactly it
/// (an every-key cut would give exactly 25,000 each), and every row read once.
pub async fn assert_chunked_from_a_sample(source: &dyn SnapshotSource, table: String) {
    let spec = SourceSpec {
        table: Some(table),
        key: vec!["id".into()],
        ..Default::default()
    };
    let schema = source.describe(&spec).await.unwrap();
    let bounds = source.split(&spec, &schema, 25_000).await.unwrap();
    assert!(
        (7..=13).contains(&bounds.len()),
        "about 9 boundaries for 10 chunks: {}",
        bounds.len()
    );
    assert!(bounds.windows(2).all(|w| w[0] < w[1]), "ascending");
    let (mut total, mut sizes) = (0, Vec::new());
    for r in &KeyRange::cut_at(bounds) {
        let mut rx = source.read(&spec, &schema, r);
        let mut n = 0;
        while let Some(b) = rx.recv().await {
            n += b.unwrap().len();
        }
        assert!((8_000..=60_000).contains(&n), "a chunk of {n} rows");
        total += n;
        sizes.push(n);
    }
    assert_eq!(total, SAMPLED_ROWS);
    assert!(sizes.iter().any(|&n| n != 25_000), "cut from a sample: {sizes:?}");
}
