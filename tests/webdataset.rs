//! WebDataset shards end to end: `simclr data pack` → the `webdataset` source gives every image
//! and label back, in an order fixed by the seed, resumable mid-shard; packing is deterministic
//! and resumes after an interruption; bad members are skipped and named, or stop the run naming
//! shard and member; a tar written by Python's `tarfile` reads; pattern errors have line:column;
//! a changed shard is re-read instead of trusting the index.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use common::{ok, scratch, simclr};
use simclr::core::{Message, Source, StageContext};
use simclr::source::common::{
    DataError, Dataset, DatasetSource, ItemError, OnError, Order, Sample, SourceOptions,
};
use simclr::source::pack::{Format, PackOptions, pack};
use simclr::source::webdataset::{Shards, counts, read_table, shard_paths};

/// `n` RGB images of varied sizes with seeded pixels; item `bad`, if any, unreadable.
struct Pictures {
    n: u64,
    bad: Option<u64>,
}

impl Dataset for Pictures {
    fn len(&self) -> u64 {
        self.n
    }
    fn get(&self, index: u64) -> Result<Sample, ItemError> {
        if Some(index) == self.bad {
            return Err(ItemError {
                item: format!("picture {index}"),
                cause: "unreadable".into(),
            });
        }
        let (w, h) = (8 + (index % 5) as u32, 6 + (index % 3) as u32);
        let pixels: Vec<u8> = (0..w * h * 3)
            .map(|i| ((i as u64 * 31 + index * 17) % 251) as u8)
            .collect();
        Ok(Sample {
            width: w,
            height: h,
            channels: 3,
            pixels: Arc::from(pixels),
            label: Some((index % 7) as u32),
        })
    }
}

fn png_options() -> PackOptions {
    PackOptions {
        format: Format::Png,
        shard_size: 4 << 10,
        ..PackOptions::default()
    }
}

fn shards_of(dir: &Path) -> Vec<PathBuf> {
    shard_paths(&dir.display().to_string()).expect("shards")
}

fn open(dir: &Path) -> Shards {
    let paths = shards_of(dir);
    let (counts, _) = counts(&paths).expect("counts");
    Shards::new(paths, &counts, 3, true, 4)
}

fn sha(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "tar"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("shard"),
            )
        })
        .collect();
    files.sort();
    files
}

/// The (epoch, item) stream of `workers` workers of a `webdataset`-ordered source, merged in
/// the runtime's round-robin order, optionally resumed at `(epoch, position)`.
fn stream(
    data: Arc<dyn Dataset>,
    counts: &[u64],
    workers: usize,
    resume: Option<(u32, u64)>,
) -> Vec<(u32, u64)> {
    stream_on_rank(data, counts, workers, resume, (0, 1))
}

/// [`stream`] on rank `rank` of `ranks`.
fn stream_on_rank(
    data: Arc<dyn Dataset>,
    counts: &[u64],
    workers: usize,
    resume: Option<(u32, u64)>,
    (rank, ranks): (usize, usize),
) -> Vec<(u32, u64)> {
    let mut per_worker = Vec::new();
    for w in 0..workers {
        let d = data.clone();
        let load: Arc<dyn Fn() -> Result<Arc<dyn Dataset>, DataError> + Send + Sync> =
            Arc::new(move || Ok(d.clone()));
        let options = SourceOptions {
            epochs: 2,
            ..SourceOptions::default()
        };
        let mut src = DatasetSource::new(
            Arc::new(OnceLock::new()),
            load,
            options,
            data.len(),
            (w, workers),
            (rank, ranks),
        )
        .with_order(Order::Shards {
            counts: Arc::from(counts.to_vec()),
            buffer: 10,
        });
        if let Some((e, p)) = resume {
            src = src.resuming_at(e, p);
        }
        let mut cx = StageContext::for_test("images");
        src.on_start(&mut cx).expect("loads");
        let mut items = Vec::new();
        while let Some(Message::Image(img)) = src.next(&mut cx).expect("reads") {
            items.push((img.id.epoch, img.id.index));
        }
        per_worker.push(items);
    }
    let mut merged = Vec::new();
    for i in 0.. {
        let before = merged.len();
        for w in &per_worker {
            if let Some(&x) = w.get(i) {
                merged.push(x);
            }
        }
        if merged.len() == before {
            break;
        }
    }
    merged
}

#[test]
fn pack_then_read_gives_every_image_and_label_back_in_a_seeded_resumable_order() {
    let dir = scratch("webdataset", "round-trip");
    let data = Pictures { n: 60, bad: None };
    let report = pack(&data, "pictures", vec![], &dir, &png_options(), &|_| {}).expect("packs");
    let index = report.index.expect("index");
    assert!(index.shards.len() >= 3, "{} shards", index.shards.len());
    assert_eq!(index.count, 60);
    let shards = open(&dir);
    assert_eq!(shards.len(), 60);
    for i in 0..60 {
        let got = shards.get(i).expect("reads");
        let want = data.get(i).expect("source");
        assert_eq!(
            (got.width, got.height, got.label),
            (want.width, want.height, want.label)
        );
        assert_eq!(got.pixels, want.pixels, "item {i}: lossless PNG");
    }

    let counts: Vec<u64> = index.shards.iter().map(|s| s.count).collect();
    let shards: Arc<dyn Dataset> = Arc::new(open(&dir));
    let one = stream(shards.clone(), &counts, 1, None);
    assert_eq!(one.len(), 120);
    for epoch in 0..2 {
        let mut items: Vec<u64> = one
            .iter()
            .filter(|(e, _)| *e == epoch)
            .map(|(_, i)| *i)
            .collect();
        assert_ne!(
            items,
            (0..60).collect::<Vec<_>>(),
            "epoch {epoch} is shuffled"
        );
        items.sort_unstable();
        assert_eq!(
            items,
            (0..60).collect::<Vec<_>>(),
            "epoch {epoch} covers every item"
        );
    }
    let (e0, e1): (Vec<&(u32, u64)>, Vec<&(u32, u64)>) = one.iter().partition(|(e, _)| *e == 0);
    assert_ne!(
        e0.iter().map(|x| x.1).collect::<Vec<_>>(),
        e1.iter().map(|x| x.1).collect::<Vec<_>>(),
        "each epoch its own order"
    );
    assert_eq!(
        stream(shards.clone(), &counts, 1, None),
        one,
        "same seed, same order"
    );
    assert_eq!(
        stream(shards.clone(), &counts, 3, None),
        one,
        "workers interleave"
    );
    // Resume in the middle of a shard of the second epoch: exactly the rest of the stream.
    let resumed = stream(shards.clone(), &counts, 2, Some((1, 23)));
    assert_eq!(resumed, one[60 + 23..].to_vec());
    // Two ranks take alternate samples of the one stream: interleaved, the one-process run's.
    let r0 = stream_on_rank(shards.clone(), &counts, 2, None, (0, 2));
    let r1 = stream_on_rank(shards, &counts, 1, None, (1, 2));
    assert_eq!((r0.len(), r1.len()), (60, 60));
    let merged: Vec<(u32, u64)> = r0.iter().zip(&r1).flat_map(|(a, b)| [*a, *b]).collect();
    assert_eq!(merged, one, "rank r owns stream positions r, r + 2, ...");
}

#[test]
fn packing_is_deterministic_and_resumes_after_an_interruption() {
    let whole = scratch("webdataset", "pack-whole");
    let data = Pictures { n: 50, bad: None };
    pack(&data, "pictures", vec![], &whole, &png_options(), &|_| {}).expect("packs");
    let again = scratch("webdataset", "pack-again");
    pack(&data, "pictures", vec![], &again, &png_options(), &|_| {}).expect("packs");
    assert_eq!(
        sha(&whole),
        sha(&again),
        "the same input gives the same bytes"
    );

    // Interrupted at item 37 (unreadable, `on_error: fail`), then run again.
    let cut = scratch("webdataset", "pack-interrupted");
    let failing = Pictures {
        n: 50,
        bad: Some(37),
    };
    let err = pack(&failing, "pictures", vec![], &cut, &png_options(), &|_| {})
        .expect_err("stops at item 37");
    assert!(err.to_string().contains("picture 37: unreadable"), "{err}");
    assert!(
        !cut.join("index.json").exists(),
        "no index for an unfinished pack"
    );
    let report = pack(&data, "pictures", vec![], &cut, &png_options(), &|_| {}).expect("resumes");
    assert!(report.reused >= 2, "kept {} shards", report.reused);
    assert_eq!(
        sha(&cut),
        sha(&whole),
        "resumed output equals the uninterrupted one"
    );

    // `skip` leaves the item out and lists it.
    let skipping = scratch("webdataset", "pack-skip");
    let options = PackOptions {
        on_error: OnError::Skip,
        ..png_options()
    };
    let report = pack(&failing, "pictures", vec![], &skipping, &options, &|_| {}).expect("packs");
    assert_eq!(report.index.expect("index").count, 49);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].item, "picture 37");
}

/// A tar with a good sample, a sample with no image (`b.txt`) and a sample whose image is cut
/// off by the end of the file.
fn broken_shard(dir: &Path) -> PathBuf {
    let good = scratch("webdataset", "broken-src");
    pack(
        &Pictures { n: 3, bad: None },
        "p",
        vec![],
        &good,
        &png_options(),
        &|_| {},
    )
    .expect("packs");
    let table = read_table(&good.join("train-000000.tar")).expect("table");
    let bytes = std::fs::read(good.join("train-000000.tar")).expect("shard");
    let image = |k: usize| {
        let (_, off, len) = table.members[k].image.clone().expect("image");
        bytes[off as usize..(off + len) as usize].to_vec()
    };
    let path = dir.join("broken-000000.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).expect("create"));
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).expect("path");
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).expect("append");
    };
    add("a.png", &image(0));
    add("a.cls", b"1");
    add("b.txt", b"not an image");
    add("c.png", &image(1));
    b.finish().expect("finish");
    drop(b);
    // Cut the file inside c.png's data.
    let table = read_table(&path).expect("table");
    let (_, off, len) = table.members[2].image.clone().expect("c.png");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(off + len / 2).expect("truncate");
    path
}

/// A definition draining the `webdataset` source of `path` in file order.
fn definition(dir: &Path, path: &str, on_error: &str) -> PathBuf {
    let file = dir.join("def.yaml");
    std::fs::write(
        &file,
        format!(
            "name: wds\nseed: 3\nstages:\n  images:\n    kind: webdataset\n    params: {{ path: '{path}', on_error: {on_error}, shuffle: false }}\n  drain: {{ kind: sink, inputs: [images] }}\n"
        ),
    )
    .expect("definition");
    file
}

#[test]
fn bad_members_are_skipped_and_named_or_stop_the_run_naming_shard_and_member() {
    let dir = scratch("webdataset", "broken");
    let shard = broken_shard(&dir);
    let table = read_table(&shard).expect("table");
    assert_eq!(table.members.len(), 3, "{:?}", table.members);
    let shards = Shards::new(vec![shard.clone()], &[3], 3, true, 4);
    assert_eq!(shards.get(0).expect("a reads").label, Some(1));
    let b = shards.get(1).expect_err("b has no image");
    assert!(b.item.ends_with("broken-000000.tar: b"), "{}", b.item);
    assert!(b.cause.contains("no image member"), "{}", b.cause);
    let c = shards.get(2).expect_err("c is cut");
    assert!(c.item.ends_with("broken-000000.tar: c"), "{}", c.item);
    assert!(c.cause.contains("member c.png is cut short"), "{}", c.cause);

    let pattern = shard.display().to_string();
    let skip = definition(&dir, &pattern, "skip");
    let run = dir.join("run-skip").display().to_string();
    let out = simclr(&[
        "run",
        skip.to_str().expect("utf-8"),
        "--run-dir",
        &run,
        "--quiet",
    ]);
    ok(&out);
    let skipped = std::fs::read_to_string(dir.join("run-skip/skipped.jsonl")).expect("skips");
    assert!(
        skipped.contains("broken-000000.tar: b") && skipped.contains("broken-000000.tar: c"),
        "{skipped}"
    );

    let fail = definition(&dir, &pattern, "fail");
    let run = dir.join("run-fail").display().to_string();
    let out = simclr(&[
        "run",
        fail.to_str().expect("utf-8"),
        "--run-dir",
        &run,
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken-000000.tar: b") && err.contains("no image member"),
        "{err}"
    );
}

#[test]
fn a_tar_written_by_python_tarfile_reads() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webdataset/python.tar");
    let shards = open_one(&fixture);
    assert_eq!(shards.len(), 3);
    for k in 0..3u64 {
        let s = shards.get(k).expect("reads");
        assert_eq!((s.width, s.height, s.label), (4, 3, Some(k as u32 % 3)));
        let at = |x: usize, y: usize| &s.pixels[(y * 4 + x) * 3..][..3];
        assert_eq!(at(2, 1), [(10 * k + 2) as u8, 20, 7]);
        assert_eq!(at(3, 2), [(10 * k + 3) as u8, 40, 7]);
    }
    let long = shards.name(2).expect("named");
    assert!(
        long.ends_with(&format!("{}/sample0002", "d".repeat(120))),
        "{long}"
    );
}

fn open_one(path: &Path) -> Shards {
    let (counts, _) = counts(&[path.to_owned()]).expect("counts");
    Shards::new(vec![path.to_owned()], &counts, 3, true, 4)
}

#[test]
fn pattern_errors_point_at_the_path_with_line_and_column() {
    let dir = scratch("webdataset", "patterns");
    for (pattern, says) in [
        (
            "shards/train-{000000..00001x}.tar",
            "a range needs two whole numbers",
        ),
        ("shards/train-{000000..000012.tar", "is never closed"),
        ("shards/nothing-{0..3}.tar", "does not exist"),
    ] {
        let file = definition(&dir, pattern, "fail");
        let out = simclr(&["validate", file.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(2), "{pattern}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{pattern}: {err}");
        assert!(err.contains("def.yaml:6:21"), "{pattern}: {err}");
    }
}

#[test]
fn a_changed_shard_is_read_from_its_headers_not_the_index() {
    let dir = scratch("webdataset", "invalidation");
    let data = Pictures { n: 30, bad: None };
    let index = pack(
        &data,
        "pictures",
        vec!["a".into()],
        &dir,
        &png_options(),
        &|_| {},
    )
    .expect("packs")
    .index
    .expect("index");
    let paths = shards_of(&dir);
    let (before, classes) = counts(&paths).expect("counts");
    assert_eq!(
        before,
        index.shards.iter().map(|s| s.count).collect::<Vec<_>>()
    );
    assert_eq!(classes, ["a"], "class names from the index");
    // Shard 0 replaced by a one-sample tar: its size and time no longer match the index.
    let table = read_table(&paths[1]).expect("table");
    let bytes = std::fs::read(&paths[1]).expect("shard");
    let (name, off, len) = table.members[0].image.clone().expect("image");
    let mut b = tar::Builder::new(std::fs::File::create(&paths[0]).expect("create"));
    let mut h = tar::Header::new_ustar();
    h.set_path(&name).expect("path");
    h.set_size(len);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &bytes[off as usize..(off + len) as usize])
        .expect("append");
    b.finish().expect("finish");
    drop(b);
    let (after, classes) = counts(&paths).expect("counts");
    assert_eq!(after[0], 1, "re-read from the changed shard");
    assert_eq!(
        after[1..],
        before[1..],
        "the other shards still from the index"
    );
    assert!(
        classes.is_empty(),
        "class names only when every shard matches its index"
    );
}

#[test]
fn data_pack_from_a_definition_trains_from_the_shards() {
    let dir = scratch("webdataset", "cli-pack");
    let out = dir.join("shards");
    let text = ok(&simclr(&[
        "data",
        "pack",
        "definitions/quickstart.yaml",
        "--out",
        out.to_str().expect("utf-8"),
        "--limit",
        "96",
        "--shard-size",
        "32KB",
        "--quiet",
    ]));
    assert!(text.contains("packed 96 items"), "{text}");
    let def = dir.join("train.yaml");
    let quickstart = std::fs::read_to_string("definitions/quickstart.yaml").expect("quickstart");
    let start = quickstart.find("  images:").expect("images stage");
    let end = quickstart.find("  views:").expect("views stage");
    let replaced = format!(
        "{}  images:\n    kind: webdataset\n    params: {{ path: '{}', epochs: 1, shuffle_buffer: 32 }}\n{}",
        &quickstart[..start],
        out.display(),
        &quickstart[end..]
    )
    .replace("batch_size: 64", "batch_size: 16");
    std::fs::write(&def, replaced).expect("definition");
    let run = dir.join("run");
    ok(&simclr(&[
        "run",
        def.to_str().expect("utf-8"),
        "--run-dir",
        run.to_str().expect("utf-8"),
        "--quiet",
    ]));
    let steps = std::fs::read_to_string(run.join("steps.jsonl")).expect("steps");
    assert_eq!(steps.lines().count(), 6, "96 images, batches of 16");
}
