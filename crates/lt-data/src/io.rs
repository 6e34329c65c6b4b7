//! Small file helpers: atomic writes and (optionally gzip-compressed) line reading.
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use crate::error::{DataError, Result};

/// Write `bytes` to `path` atomically (temporary file in the same directory + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::io(path, e));
    }
    Ok(())
}

/// Open a text file for line reading; files ending in `.gz` are decompressed.
pub fn open_lines(path: &Path) -> Result<Box<dyn BufRead>> {
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let r: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(Box::new(BufReader::new(r)))
}

/// Read the non-blank lines of a (possibly gzipped) JSONL file as `(1-based line number, text)`.
pub fn read_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let mut out = Vec::new();
    for (i, line) in open_lines(path)?.lines().enumerate() {
        let line = line.map_err(|e| DataError::io(path, e))?;
        if !line.trim().is_empty() {
            out.push((i + 1, line));
        }
    }
    Ok(out)
}
