//! Image manifests and indexes: the media types the registry serves, parsing with the
//! checks a pull would otherwise fail on, and the manifest written for docker-save images.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::storage::Digest;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Annotation containerd (and docker save since 25) puts on the full image name.
pub(crate) const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI layout's reference annotation: a full name or just a tag, by producer.
pub(crate) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Manifests are small; registries refuse larger ones (distribution 3 at 4 MiB).
pub(crate) const MANIFEST_LIMIT: u64 = 4 * 1024 * 1024;

/// A content descriptor, checked: sha256 digest and a size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Descriptor {
    pub(crate) media_type: Option<String>,
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) annotations: BTreeMap<String, String>,
}

/// A parsed manifest: an image, or an index of manifests (one per platform).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Manifest {
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
    Index {
        manifests: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: Option<String>,
    size: Option<i64>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn is_image_type(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

fn is_index_type(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// Parses a manifest as the registry will when serving it. `declared` is the media type
/// of the descriptor that pointed here, which must agree with the content's own.
///
/// The registry (distribution 2.8) picks a handler by the content's `mediaType`; one
/// it does not know is refused on every pull, and without one it serves OCI. Those are
/// the rules checked here, so an archive the registry could not serve fails at seeding.
pub(crate) fn parse_manifest(bytes: &[u8], declared: Option<&str>) -> Result<Manifest, String> {
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))?;
    match raw.schema_version {
        Some(2) => {}
        Some(1) => {
            return Err(
                "schema 1 manifests are not supported; re-save the image (schema 2 or OCI)".into(),
            )
        }
        Some(v) => return Err(format!("schemaVersion {v} is not supported (expected 2)")),
        None => return Err("schemaVersion is missing".into()),
    }
    if let Some(content) = &raw.media_type {
        if !is_image_type(content) && !is_index_type(content) {
            return Err(format!(
                "media type {content:?} is not an image manifest or index the registry serves"
            ));
        }
    }
    if let Some(declared) = declared {
        if !is_image_type(declared) && !is_index_type(declared) {
            return Err(format!(
                "the descriptor's media type {declared:?} is not an image manifest or index"
            ));
        }
        if let Some(content) = raw.media_type.as_deref().filter(|c| *c != declared) {
            return Err(format!(
                "the descriptor says {declared:?} but the manifest says {content:?}"
            ));
        }
    }
    let is_index = match raw.media_type.as_deref() {
        Some(content) => is_index_type(content),
        None => raw.manifests.is_some(),
    };
    if is_index {
        let manifests = raw
            .manifests
            .ok_or("an index needs a `manifests` list")?
            .into_iter()
            .enumerate()
            .map(|(i, d)| descriptor(d, &format!("manifests[{i}]")))
            .collect::<Result<_, _>>()?;
        return Ok(Manifest::Index { manifests });
    }
    let config = raw
        .config
        .ok_or("an image manifest needs a `config` descriptor")?;
    let layers = raw
        .layers
        .ok_or("an image manifest needs a `layers` list")?
        .into_iter()
        .enumerate()
        .map(|(i, d)| descriptor(d, &format!("layers[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Manifest::Image {
        config: descriptor(config, "config")?,
        layers,
    })
}

/// Parses an OCI layout's `index.json`: an image index naming the layout's images.
pub(crate) fn parse_layout_index(bytes: &[u8]) -> Result<Vec<Descriptor>, String> {
    match parse_manifest(bytes, None)? {
        Manifest::Index { manifests } => Ok(manifests),
        Manifest::Image { .. } => Err("an image manifest, not an image index".into()),
    }
}

fn descriptor(raw: RawDescriptor, field: &str) -> Result<Descriptor, String> {
    let digest_text = raw
        .digest
        .ok_or_else(|| format!("{field}: digest is missing"))?;
    let digest = Digest::parse(&digest_text).ok_or_else(|| {
        format!("{field}: digest {digest_text:?} is not sha256: and 64 lowercase hex digits")
    })?;
    let size = match raw.size {
        Some(size) => {
            u64::try_from(size).map_err(|_| format!("{field}: size {size} is negative"))?
        }
        None => return Err(format!("{field}: size is missing")),
    };
    Ok(Descriptor {
        media_type: raw.media_type,
        digest,
        size,
        annotations: raw.annotations,
    })
}

#[derive(Deserialize)]
struct RawConfig {
    rootfs: Option<RawRootfs>,
}

#[derive(Deserialize)]
struct RawRootfs {
    diff_ids: Option<Vec<String>>,
}

/// The uncompressed layer digests an image config lists (`rootfs.diff_ids`).
pub(crate) fn diff_ids(config: &[u8]) -> Result<Vec<Digest>, String> {
    let raw: RawConfig =
        serde_json::from_slice(config).map_err(|e| format!("not a valid image config: {e}"))?;
    let ids = raw
        .rootfs
        .ok_or("rootfs is missing")?
        .diff_ids
        .ok_or("rootfs.diff_ids is missing")?;
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            Digest::parse(id)
                .ok_or_else(|| format!("rootfs.diff_ids[{i}] {id:?} is not a sha256 digest"))
        })
        .collect()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: OutDescriptor<'a>,
    layers: Vec<OutDescriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutDescriptor<'a> {
    media_type: &'a str,
    digest: String,
    size: u64,
}

/// One layer of a docker-save image, as it goes into the manifest.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub(crate) media_type: &'static str,
    pub(crate) digest: Digest,
    pub(crate) size: u64,
}

/// The manifest for an image from a docker-save archive.
///
/// OCI rather than Docker schema 2: docker-save layers are plain tars, and only OCI has
/// a media type for an uncompressed layer (`...layer.v1.tar`). Schema 2 names only
/// gzip layers, so it would either lie about the compression or need every layer
/// recompressed, which changes its digest and costs CPU on every node. containerd
/// (≥ 1.0) pulls OCI manifests with uncompressed layers, unpacking them without a
/// decompressor, and their digests equal the config's `diff_ids`. The Docker config
/// JSON is a valid OCI image config, so it is stored unchanged.
///
/// The output is deterministic (fixed field order, no timestamps), so seeding the same
/// archive again yields the same manifest digest.
pub(crate) fn image_manifest(config: &Digest, config_size: u64, layers: &[Layer]) -> Vec<u8> {
    let manifest = OutManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST,
        config: OutDescriptor {
            media_type: OCI_CONFIG,
            digest: config.to_string(),
            size: config_size,
        },
        layers: layers
            .iter()
            .map(|layer| OutDescriptor {
                media_type: layer.media_type,
                digest: layer.digest.to_string(),
                size: layer.size,
            })
            .collect(),
    };
    // Serialising plain structs of strings and numbers cannot fail.
    serde_json::to_vec(&manifest).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        Digest::of(&[n]).to_string()
    }

    #[test]
    fn parses_image_manifests_and_indexes() {
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":3}},
            "layers":[{{"mediaType":"{OCI_LAYER}","digest":"{}","size":7}}]}}"#,
            digest(1),
            digest(2)
        );
        match parse_manifest(image.as_bytes(), Some(OCI_MANIFEST)) {
            Ok(Manifest::Image { config, layers }) => {
                assert_eq!(config.size, 3);
                assert_eq!(layers.len(), 1);
                assert_eq!(layers[0].digest.to_string(), digest(2));
            }
            other => panic!("unexpected {other:?}"),
        }
        // Without a media type the registry serves OCI, told apart by shape.
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9,
            "annotations":{{"{ANNOTATION_IMAGE_NAME}":"docker.io/library/x:1"}}}}]}}"#,
            digest(3)
        );
        let entries = parse_layout_index(index.as_bytes()).expect("index");
        assert_eq!(
            entries[0].annotations[ANNOTATION_IMAGE_NAME],
            "docker.io/library/x:1"
        );
    }

    #[test]
    fn refuses_what_the_registry_could_not_serve() {
        let d = digest(1);
        let cases: &[(String, Option<&str>, &str)] = &[
            ("{".into(), None, "not a valid manifest"),
            (r#"{"mediaType":"x"}"#.into(), None, "schemaVersion is missing"),
            (r#"{"schemaVersion":1}"#.into(), None, "schema 1"),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.artifact.manifest.v1+json"}"#
                    .into(),
                None,
                "not an image manifest or index",
            ),
            (
                format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#),
                Some(OCI_MANIFEST),
                "the descriptor says",
            ),
            (
                r#"{"schemaVersion":2,"layers":[]}"#.into(),
                None,
                "needs a `config`",
            ),
            (
                format!(r#"{{"schemaVersion":2,"config":{{"digest":"{d}"}},"layers":[]}}"#),
                None,
                "config: size is missing",
            ),
            (
                format!(
                    r#"{{"schemaVersion":2,"config":{{"digest":"{d}","size":1}},"layers":[{{"digest":"sha512:00","size":1}}]}}"#
                ),
                None,
                "layers[0]: digest \"sha512:00\"",
            ),
            (
                format!(
                    r#"{{"schemaVersion":2,"config":{{"digest":"{d}","size":-1}},"layers":[]}}"#
                ),
                None,
                "size -1 is negative",
            ),
        ];
        for (text, declared, expected) in cases {
            let error = parse_manifest(text.as_bytes(), *declared).expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn reads_diff_ids_from_a_config() {
        let config = format!(
            r#"{{"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            digest(5)
        );
        assert_eq!(
            diff_ids(config.as_bytes()).expect("diff ids")[0].to_string(),
            digest(5)
        );
        assert!(diff_ids(b"{}")
            .expect_err("no rootfs")
            .contains("rootfs is missing"));
        assert!(diff_ids(br#"{"rootfs":{"diff_ids":["md5:1"]}}"#)
            .expect_err("bad id")
            .contains("diff_ids[0]"));
    }

    #[test]
    fn generated_manifest_is_oci_and_stable() {
        let layers = [Layer {
            media_type: OCI_LAYER,
            digest: Digest::of(b"layer"),
            size: 5,
        }];
        let config = Digest::of(b"config");
        let first = image_manifest(&config, 6, &layers);
        assert_eq!(first, image_manifest(&config, 6, &layers));
        match parse_manifest(&first, Some(OCI_MANIFEST)) {
            Ok(Manifest::Image {
                config: c,
                layers: l,
            }) => {
                assert_eq!(c.media_type.as_deref(), Some(OCI_CONFIG));
                assert_eq!(l[0].media_type.as_deref(), Some(OCI_LAYER));
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = String::from_utf8(first).expect("utf-8");
        assert!(text.starts_with(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json""#
        ));
    }
}
