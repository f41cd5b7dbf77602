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

/// The largest zstd window accepted (2^27 = 128 MiB): what every level and plain
/// `zstd --long` write. The decoder allocates the window a frame's header asks for
/// before reading any data, so a few hundred hostile bytes asking for 2 GiB
/// (`--long=31`) would cost that much memory on a node; such a frame is refused.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

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
            decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
            Box::new(decoder)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (images_seed): a small zstd frame whose header asks for a 2 GiB
    /// window made the decoder allocate 2 GiB before reading a byte of data.
    #[test]
    fn a_zstd_frame_asking_for_a_huge_window_is_refused() {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(31).unwrap();
        encoder.include_contentsize(false).unwrap();
        io::Write::write_all(&mut encoder, b"a tiny archive with a 2 GiB window").unwrap();
        let frame = encoder.finish().unwrap();
        let mut out = Vec::new();
        let read = decoder(Compression::Zstd, &frame[..]).and_then(|mut d| d.read_to_end(&mut out));
        assert!(read.is_err(), "decoded with a 2 GiB window: {out:?}");

        // A window within the limit still decodes.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(ZSTD_WINDOW_LOG_MAX).unwrap();
        encoder.include_contentsize(false).unwrap();
        io::Write::write_all(&mut encoder, b"fine").unwrap();
        let frame = encoder.finish().unwrap();
        let mut out = Vec::new();
        decoder(Compression::Zstd, &frame[..])
            .and_then(|mut d| d.read_to_end(&mut out))
            .unwrap();
        assert_eq!(out, b"fine");
    }

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
