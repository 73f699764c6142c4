//! Convert a file of JSON lines to one Parquet file with the S3 sink's Parquet encoder: the
//! conversion alone, for `scripts/bench-parquet.sh` to set beside pyarrow and DuckDB.
//!
//!   cargo run --release -p spillway-sink-s3 --example parquet_convert -- IN.json OUT.parquet \
//!     'ts:timestamp,method:string,status:int' [snappy|gzip|zstd|none] [row_group_mib] [threads]
//!
//! The columns `infer` infer the table from the first 1,000 records (`schema: {infer: {}}`).

use std::io::Read;

use spillway_sink_s3::parquet::ParquetConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output, columns, rest @ ..] = args.as_slice() else {
        return Err("usage: parquet_convert IN OUT 'name:type,…'|infer [compression] [row_group_mib] [threads]".into());
    };
    let schema = if columns == "infer" {
        serde_json::json!({ "infer": {} })
    } else {
        let columns: Vec<serde_json::Value> = columns
            .split(',')
            .map(|column| {
                let (name, type_name) = column.split_once(':').unwrap_or((column, "string"));
                serde_json::json!({ "name": name, "type": type_name })
            })
            .collect();
        serde_json::json!({ "columns": columns })
    };
    let config: ParquetConfig = serde_json::from_value(serde_json::json!({
        "schema": schema,
        "compression": rest.first().map_or("snappy", String::as_str),
        "row_group_mib": rest.get(1).map_or(Ok(32), |mib| mib.parse::<u64>())?,
        "threads": rest.get(2).map(|threads| threads.parse::<usize>()).transpose()?,
    }))?;
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(format!("{problems:?}").into());
    }
    let factory = config.encoder_factory()?;
    let mut encoder = spillway_sink_api::EncoderFactory::new_encoder(&factory, 1 << 20);
    let (mut rows, mut refused) = (0u64, 0u64);
    // Lines are cut from large reads in place (no allocation per line), as the pipeline hands
    // the encoder slices of WAL frames.
    let mut file = std::fs::File::open(input)?;
    let mut buffer = vec![0u8; 8 << 20];
    let mut filled = 0;
    loop {
        let read = file.read(&mut buffer[filled..])?;
        filled += read;
        let complete =
            if read == 0 { filled } else { memchr::memrchr(b'\n', &buffer[..filled]).map_or(0, |at| at + 1) };
        let mut start = 0;
        // memchr finds line ends a word at a time (splitting byte by byte was 6 % of the run).
        let ends = memchr::memchr_iter(b'\n', &buffer[..complete])
            .chain((complete > 0 && buffer[complete - 1] != b'\n').then_some(complete));
        for end in ends {
            let line = &buffer[start..end];
            start = end + 1;
            if line.is_empty() {
                continue;
            }
            match encoder.push(line, b"") {
                Ok(()) => rows += 1,
                Err(spillway_sink_api::EncodeError::Rejected { .. }) => refused += 1,
                Err(error) => return Err(error.into()),
            }
        }
        buffer.copy_within(complete..filled, 0);
        filled -= complete;
        if read == 0 {
            break;
        }
        if filled == buffer.len() {
            buffer.resize(buffer.len() * 2, 0);
        }
    }
    let payload = encoder.finish()?;
    // With threads > 1 misfits are found on the pool and refused in the payload.
    let late = payload.refused().len() as u64;
    let (rows, refused) = (rows - late, refused + late);
    std::fs::write(output, payload.to_bytes())?;
    eprintln!("{rows} rows, {refused} refused, {} bytes", payload.len());
    Ok(())
}
