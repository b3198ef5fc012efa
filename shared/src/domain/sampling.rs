//! Chunk boundaries from a sample of a large table's pages. Reading every key costs about 0.4 s
//! per 1,000,000 rows on every run (interval syncs included) and before an onboarding's first
//! chunk can start; a sample gives chunks of about `chunk_rows` rows from a small fraction of
//! that. Both server sources use it (PostgreSQL's and SQL Server's `TABLESAMPLE SYSTEM`).

/// Below this many estimated rows, every key is read (exact chunks, and cheap anyway).
const SAMPLE_FROM_ROWS: f64 = 200_000.0;
/// Sampled keys per chunk (at least), so chunk sizes vary by a few percent, not by half.
const SAMPLES_PER_CHUNK: f64 = 200.0;
/// Sampled pages per chunk (at least): a page holds a run of neighbouring keys, so too few
/// pages make clumps, whatever the row count.
const PAGES_PER_CHUNK: f64 = 50.0;
/// Above this share of the pages, reading every key costs little more than sampling.
const MAX_PERCENT: f64 = 25.0;

/// How to sample a table of `estimate` rows on `pages` pages: the number of chunks wanted and
/// the percentage of pages to sample, or `None` when every key should be read instead.
pub fn plan(estimate: f64, pages: f64, chunk_rows: u64) -> Option<(f64, f64)> {
    let chunks = (estimate / chunk_rows.max(1) as f64).ceil();
    if estimate < SAMPLE_FROM_ROWS || chunks < 2.0 {
        return None;
    }
    let percent = (100.0 * chunks * SAMPLES_PER_CHUNK / estimate)
        .max(100.0 * chunks * PAGES_PER_CHUNK / pages.max(1.0))
        .min(100.0);
    (percent <= MAX_PERCENT).then_some((chunks, percent))
}

/// Below this many pages, a table without a row estimate is read whole (exact chunks).
const PILOT_FROM_PAGES: f64 = 2_000.0;
/// Pages a pilot sample reads to estimate the rows of a table that was never analysed.
const PILOT_PAGES: f64 = 500.0;

/// The percentage of pages to sample to estimate the rows of a table that has no estimate yet
/// (never analysed: a table loaded just before its onboarding) from its size in `pages`, or
/// `None` when it is small enough to read whole. Its row count is then the sample's scaled up,
/// and [`plan`] decides as for an analysed table.
pub fn pilot_percent(pages: f64) -> Option<f64> {
    (pages >= PILOT_FROM_PAGES).then(|| (100.0 * PILOT_PAGES / pages).min(MAX_PERCENT))
}

/// Boundaries cutting `sample` (encoded keys, ascending, distinct) into `chunks` chunks, or
/// `None` when the sample is too thin to trust (a table much smaller than its estimate).
pub fn bounds(sample: &[Vec<u8>], chunks: f64) -> Option<Vec<Vec<u8>>> {
    if (sample.len() as f64) < chunks * SAMPLES_PER_CHUNK / 4.0 {
        return None;
    }
    let every = (sample.len() as f64 / chunks).max(1.0);
    let mut out: Vec<Vec<u8>> = Vec::new();
    for i in 1..chunks as usize {
        match sample.get((i as f64 * every) as usize) {
            Some(k) if out.last().is_none_or(|l| l < k) => out.push(k.clone()),
            _ => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_tables_and_large_fractions_are_read_whole() {
        assert_eq!(plan(150_000.0, 3_000.0, 10_000), None, "small");
        assert_eq!(plan(1_000_000.0, 20_000.0, 1_000_000), None, "one chunk");
        assert_eq!(
            plan(1_000_000.0, 20_000.0, 1_000),
            None,
            "1,000 chunks need over 25% of the pages"
        );
        let (chunks, percent) = plan(10_000_000.0, 200_000.0, 100_000).unwrap();
        assert_eq!(chunks, 100.0);
        assert!(
            (percent - 2.5).abs() < 1e-9,
            "{percent}: 50 pages a chunk outweigh 200 keys"
        );
    }

    #[test]
    fn a_table_without_an_estimate_is_piloted_by_its_size() {
        assert_eq!(pilot_percent(1_999.0), None, "small: read whole");
        assert_eq!(pilot_percent(25_000.0), Some(2.0), "500 of 25,000 pages");
        assert_eq!(pilot_percent(2_000.0), Some(25.0), "never more than a quarter");
        // A 1,000,000-row table on 25,000 pages: the pilot's 2% gives ~20,000 rows, and the
        // plan for 10 chunks wants 2% too, so the pilot sample serves as the sample.
        let (chunks, percent) = plan(20_000.0 * 100.0 / 2.0, 25_000.0, 100_000).unwrap();
        assert_eq!((chunks, percent), (10.0, 2.0));
    }

    #[test]
    fn a_sample_is_cut_evenly_and_a_thin_one_is_refused() {
        let sample: Vec<Vec<u8>> = (0u32..1_000).map(|i| i.to_be_bytes().to_vec()).collect();
        let b = bounds(&sample, 4.0).unwrap();
        assert_eq!(
            b,
            vec![250u32, 500, 750]
                .into_iter()
                .map(|i| i.to_be_bytes().to_vec())
                .collect::<Vec<_>>()
        );
        assert_eq!(bounds(&sample[..100], 4.0), None, "100 keys for 4 chunks is too thin");
    }
}
