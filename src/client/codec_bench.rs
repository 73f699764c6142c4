//! `spillway bench --codec-only` (and the baseline `spillway bench` measures before it sends):
//! the codec alone on exactly the bytes the load generator sends, so spillway's figures can be
//! read as ratios to what the codec itself costs on this machine. Single-threaded gzip level 6
//! (flate2 with the zlib-rs backend, the reference the targets are stated against) and zstd
//! level 3, fed in 1 MiB writes and one line at a time, plus the large-write case on two threads
//! compressing halves (the drain target is stated against the codec's two-core speed); and gzip
//! level 6 as the sinks compress it (libdeflate, 1 MiB chunks each ended by a sync flush), which
//! takes whole buffers only, so it has no line-at-a-time figure. CPU time is each thread's own
//! (`CLOCK_THREAD_CPUTIME_ID`), so the measuring process's other threads do not count.

use std::fmt;
use std::io::{self, Write};
use std::time::Instant;

/// Writes fed to the codec in the large-write case.
pub const LARGE_WRITE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Gzip,
    /// gzip level 6 as the sinks write it (libdeflate); measured beside [`Codec::Gzip`].
    GzipLibdeflate,
    Zstd,
}

impl Codec {
    pub fn parse(name: &str) -> Option<Codec> {
        match name {
            "gzip" => Some(Codec::Gzip),
            "zstd" => Some(Codec::Zstd),
            _ => None,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Gzip => "gzip -6",
            Codec::GzipLibdeflate => "gzip -6 (libdeflate)",
            Codec::Zstd => "zstd -3",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// 1 MiB writes, one thread.
    Large,
    /// One line (record line, ~350 B) per write, one thread.
    PerLine,
    /// 1 MiB writes, two threads each compressing half of the input.
    LargeTwoThreads,
}

impl fmt::Display for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Feed::Large => "1 thread, 1 MiB writes",
            Feed::PerLine => "1 thread, one line per write",
            Feed::LargeTwoThreads => "2 threads, 1 MiB writes",
        })
    }
}

/// One codec measurement.
#[derive(Debug, Clone, Copy)]
pub struct CodecFigure {
    pub codec: Codec,
    pub feed: Feed,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
}

impl CodecFigure {
    pub fn mib_per_second(&self) -> f64 {
        self.input_bytes as f64 / (1 << 20) as f64 / self.wall_seconds
    }

    pub fn cpu_seconds_per_gib(&self) -> f64 {
        self.cpu_seconds / (self.input_bytes as f64 / (1 << 30) as f64)
    }

    pub fn cpu_seconds_per_byte(&self) -> f64 {
        self.cpu_seconds / self.input_bytes as f64
    }
}

/// All codec figures of one run.
#[derive(Debug, Clone, Default)]
pub struct CodecReport {
    pub figures: Vec<CodecFigure>,
}

impl CodecReport {
    pub fn get(&self, codec: Codec, feed: Feed) -> Option<&CodecFigure> {
        self.figures.iter().find(|figure| figure.codec == codec && figure.feed == feed)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for figure in &self.figures {
            out.push_str(&format!(
                "codec {:<20} {:<30} {:7.1} MiB/s {:6.2} CPU-s/GiB  (ratio {:.1}:1, {:.0} MiB in)\n",
                figure.codec.to_string(),
                figure.feed.to_string(),
                figure.mib_per_second(),
                figure.cpu_seconds_per_gib(),
                figure.input_bytes as f64 / figure.output_bytes.max(1) as f64,
                figure.input_bytes as f64 / (1 << 20) as f64,
            ));
        }
        out.pop();
        out
    }
}

/// Measure both codecs, every feed, on `total` bytes of `cycle` (repeated from its start as the
/// load generator repeats its bodies). `cycle` is made of whole lines, each ending with `\n`.
pub fn measure(cycle: &[u8], total: usize) -> io::Result<CodecReport> {
    let mut figures = Vec::new();
    for codec in [Codec::Gzip, Codec::GzipLibdeflate, Codec::Zstd] {
        for feed in [Feed::Large, Feed::PerLine, Feed::LargeTwoThreads] {
            if codec == Codec::GzipLibdeflate && feed == Feed::PerLine {
                continue;
            }
            figures.push(measure_one(codec, feed, cycle, total)?);
        }
    }
    Ok(CodecReport { figures })
}

fn measure_one(codec: Codec, feed: Feed, cycle: &[u8], total: usize) -> io::Result<CodecFigure> {
    let started = Instant::now();
    let (input_bytes, output_bytes, cpu_seconds) = match feed {
        Feed::Large => compress_thread(codec, cycle, 0, total, false)?,
        Feed::PerLine => compress_thread(codec, cycle, 0, total, true)?,
        Feed::LargeTwoThreads => {
            let half = total / 2;
            // The second half starts where the first ends, as the second half of the stream.
            let second_start = line_start_at_or_after(cycle, half % cycle.len());
            let (a, b) = std::thread::scope(|scope| {
                let first = scope.spawn(|| compress_thread(codec, cycle, 0, half, false));
                let second = scope.spawn(|| compress_thread(codec, cycle, second_start, total - half, false));
                (first.join(), second.join())
            });
            let a = a.map_err(|_| io::Error::other("codec thread panicked"))??;
            let b = b.map_err(|_| io::Error::other("codec thread panicked"))??;
            (a.0 + b.0, a.1 + b.1, a.2 + b.2)
        }
    };
    Ok(CodecFigure {
        codec,
        feed,
        input_bytes,
        output_bytes,
        wall_seconds: started.elapsed().as_secs_f64(),
        cpu_seconds,
    })
}

fn line_start_at_or_after(cycle: &[u8], offset: usize) -> usize {
    if offset == 0 {
        return 0;
    }
    match cycle[offset - 1..].iter().position(|&byte| byte == b'\n') {
        Some(position) => (offset + position) % cycle.len(),
        None => 0,
    }
}

/// Compress `amount` bytes of `cycle` starting at `start` (wrapping), on this thread. Returns
/// (input bytes, output bytes, this thread's CPU seconds). Stops at the first line end at or
/// after `amount`, so line-at-a-time and large writes see the same input.
fn compress_thread(
    codec: Codec,
    cycle: &[u8],
    start: usize,
    amount: usize,
    per_line: bool,
) -> io::Result<(u64, u64, f64)> {
    let cpu_before = thread_cpu_seconds();
    let mut sink = CountingSink(0);
    let mut fed = 0u64;
    {
        let mut encoder: Box<dyn FinishWrite + '_> = match codec {
            Codec::Gzip => Box::new(flate2::write::GzEncoder::new(&mut sink, flate2::Compression::new(6))),
            Codec::GzipLibdeflate => Box::new(SyncFlushedChunks::new(&mut sink)?),
            Codec::Zstd => Box::new(zstd::stream::write::Encoder::new(&mut sink, 3)?),
        };
        for piece in Pieces::new(cycle, start, amount, per_line) {
            encoder.write_all(piece)?;
            fed += piece.len() as u64;
        }
        encoder.finish_boxed()?;
    }
    Ok((fed, sink.0, thread_cpu_seconds() - cpu_before))
}

/// libdeflate as the sinks run it: each write is one chunk, compressed whole and ended by a sync
/// flush (libdeflate has no streaming interface).
struct SyncFlushedChunks<W> {
    compressor: libdeflate_sync::Compressor,
    out: Vec<u8>,
    inner: W,
}

impl<W: Write> SyncFlushedChunks<W> {
    fn new(inner: W) -> io::Result<Self> {
        let compressor = libdeflate_sync::Compressor::new(libdeflate_sync::DEFAULT_LEVEL).map_err(io::Error::other)?;
        Ok(Self { compressor, out: Vec::new(), inner })
    }
}

impl<W: Write> Write for SyncFlushedChunks<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.clear();
        self.compressor.compress_sync_flush(buf, &mut self.out);
        self.inner.write_all(&self.out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> FinishWrite for SyncFlushedChunks<W> {
    fn finish_boxed(mut self: Box<Self>) -> io::Result<()> {
        self.inner.write_all(&libdeflate_sync::FINAL_BLOCK)
    }
}

trait FinishWrite: Write {
    fn finish_boxed(self: Box<Self>) -> io::Result<()>;
}

impl<W: Write> FinishWrite for flate2::write::GzEncoder<W> {
    fn finish_boxed(self: Box<Self>) -> io::Result<()> {
        self.finish().map(drop)
    }
}

impl<W: Write> FinishWrite for zstd::stream::write::Encoder<'_, W> {
    fn finish_boxed(self: Box<Self>) -> io::Result<()> {
        self.finish().map(drop)
    }
}

/// Counts compressed bytes and drops them: the measurement is the codec, not memory traffic.
struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The input as write-sized slices of the repeated cycle: 1 MiB (never across the cycle's end)
/// or one line each, until at least `amount` bytes and a line end.
struct Pieces<'a> {
    cycle: &'a [u8],
    position: usize,
    left: usize,
    per_line: bool,
}

impl<'a> Pieces<'a> {
    fn new(cycle: &'a [u8], start: usize, amount: usize, per_line: bool) -> Self {
        Self { cycle, position: start, left: amount, per_line }
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 || self.cycle.is_empty() {
            return None;
        }
        let rest = &self.cycle[self.position..];
        let piece = if self.per_line {
            let end = rest.iter().position(|&byte| byte == b'\n').map_or(rest.len(), |at| at + 1);
            &rest[..end]
        } else {
            let want = self.left.min(LARGE_WRITE_BYTES).min(rest.len());
            // End on a line end so both feeds stop at the same place.
            let end = rest[want - 1..].iter().position(|&byte| byte == b'\n').map_or(rest.len(), |at| want + at);
            &rest[..end]
        };
        self.position = (self.position + piece.len()) % self.cycle.len();
        self.left = self.left.saturating_sub(piece.len());
        Some(piece)
    }
}

/// CPU time of the calling thread.
pub fn thread_cpu_seconds() -> f64 {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `time` is a valid, writable timespec; the clock id is a constant Linux knows.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    if result != 0 {
        return 0.0;
    }
    time.tv_sec as f64 + time.tv_nsec as f64 * 1e-9
}

/// `model name` from `/proc/cpuinfo` and the cores this process may use.
pub fn machine_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    format!("{model}, {cores} cores")
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn cycle() -> Vec<u8> {
        (0..2000)
            .map(|n| format!("{{\"n\":{n},\"pad\":\"{}\"}}\n", "x".repeat(n % 40)))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn both_feeds_see_the_same_bytes() {
        let cycle = cycle();
        let total = cycle.len() * 2 + 100;
        let large: Vec<u8> = Pieces::new(&cycle, 0, total, false).flatten().copied().collect();
        let lines: Vec<u8> = Pieces::new(&cycle, 0, total, true).flatten().copied().collect();
        assert_eq!(large, lines);
        assert!(large.len() >= total && large.ends_with(b"\n"));
        assert_eq!(&large[..cycle.len()], &cycle[..]);
    }

    #[test]
    fn every_codec_and_feed_compresses_the_whole_input() {
        let cycle = cycle();
        let report = measure(&cycle, cycle.len() * 3).unwrap();
        assert_eq!(report.figures.len(), 8);
        for figure in &report.figures {
            assert!(figure.input_bytes >= (cycle.len() * 3) as u64, "{figure:?}");
            assert!(figure.output_bytes > 0 && figure.output_bytes < figure.input_bytes, "{figure:?}");
            assert!(figure.cpu_seconds >= 0.0 && figure.wall_seconds > 0.0, "{figure:?}");
        }
        assert!(report.render().contains("gzip -6"));
        assert!(report.render().contains("gzip -6 (libdeflate)"));
        assert!(report.get(Codec::GzipLibdeflate, Feed::PerLine).is_none());
    }

    #[test]
    fn the_libdeflate_stream_measured_is_one_deflate_stream() {
        let cycle = cycle();
        let mut out = Vec::new();
        let mut encoder: Box<dyn FinishWrite + '_> = Box::new(SyncFlushedChunks::new(&mut out).unwrap());
        for piece in Pieces::new(&cycle, 0, cycle.len(), false) {
            encoder.write_all(piece).unwrap();
        }
        encoder.finish_boxed().unwrap();
        let mut decoded = Vec::new();
        flate2::read::DeflateDecoder::new(&out[..]).read_to_end(&mut decoded).unwrap();
        assert_eq!(decoded, cycle);
    }

    #[test]
    fn the_gzip_stream_measured_is_valid_gzip() {
        let cycle = cycle();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        for piece in Pieces::new(&cycle, 0, cycle.len(), true) {
            encoder.write_all(piece).unwrap();
        }
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&encoder.finish().unwrap()[..]).read_to_end(&mut decoded).unwrap();
        assert_eq!(decoded, cycle);
    }
}
