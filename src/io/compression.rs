//! Archive formats recognised by their first bytes, never by file name.

use std::fmt;
use std::io::{self, BufRead, Read};

/// How a cluster-image archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "tar",
            Compression::Gzip => "tar+gzip",
            Compression::Zstd => "tar+zstd",
        })
    }
}

/// Formats recognised only to be refused with a precise message.
const UNSUPPORTED: [(&[u8], &str); 4] = [
    (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz"),
    (b"BZh", "bzip2"),
    (&[0x04, 0x22, 0x4d, 0x18], "lz4"),
    (b"PK\x03\x04", "zip"),
];

/// Recognises gzip and zstd by their first bytes; formats refused by name are named;
/// anything else is taken as uncompressed (and the tar reader says if it is not).
pub fn detect_bytes(head: &[u8]) -> Result<Compression, &'static str> {
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Compression::Gzip);
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Ok(Compression::Zstd);
    }
    match UNSUPPORTED
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
    {
        Some((_, name)) => Err(name),
        None => Ok(Compression::None),
    }
}

/// Reads the magic bytes at the start of `reader` (without consuming them).
pub fn detect(reader: &mut impl BufRead) -> io::Result<Result<Compression, &'static str>> {
    Ok(detect_bytes(reader.fill_buf()?))
}

/// Recognises the compression of the file at `path` from its first bytes.
pub fn sniff(path: &std::path::Path) -> io::Result<Result<Compression, &'static str>> {
    let mut head = [0u8; 8];
    let mut filled = 0;
    let mut file = std::fs::File::open(path)?;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(detect_bytes(&head[..filled]))
}

/// Wraps `reader` in the decoder `compression` needs.
pub fn decoder<'a, R: BufRead + 'a>(
    compression: Compression,
    reader: R,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        // MultiGzDecoder: `cat a.gz b.gz` streams are valid gzip, as GNU tar reads them.
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(reader)?;
            // Allow windows up to 2 GiB (--long=31), as `zstd --long` archives use;
            // memory then grows only if the archive really asks for it.
            decoder.window_log_max(31)?;
            Box::new(decoder)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_magic_bytes() {
        let check = |bytes: &[u8]| detect(&mut io::BufReader::new(bytes)).unwrap();
        assert_eq!(check(&[0x1f, 0x8b, 8, 0]), Ok(Compression::Gzip));
        assert_eq!(check(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Ok(Compression::Zstd));
        assert_eq!(check(b"bin/k3s\0\0\0"), Ok(Compression::None));
        assert_eq!(check(&[0xfd, b'7', b'z', b'X', b'Z', 0]), Err("xz"));
        assert_eq!(check(b"BZh91AY"), Err("bzip2"));
        assert_eq!(detect_bytes(b""), Ok(Compression::None));
    }
}
