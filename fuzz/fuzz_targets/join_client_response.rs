//! The joiner's side: the decrypted bytes a join service answers with, read and checked
//! by `client::read_response` as sent, and again as an answer body framed and tagged
//! with the joiner's key (so authenticated answers reach the join material's parser,
//! `JoinMaterial::parse`, as `fetch` calls it).
//!
//! The first input byte picks how the rest is used: even, the raw stream; odd, a body.
#![no_main]

use bootstrap::distro::JoinMaterial;
use bootstrap::join::client::read_response;
use bootstrap::join::keys::credential_key;
use bootstrap::join::proto;
use bootstrap::join::JoinKeys;
use bootstrap::secret::Secret;
use libfuzzer_sys::fuzz_target;

const CREDENTIAL: &str = "fuzz credential 0123456789abcdef";
const BINDING: [u8; 32] = [9u8; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let secret = Secret::new(CREDENTIAL);
    let keys = JoinKeys::from_credential([7u8; 32], &secret);
    let stream = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let tag = proto::tag(
            &credential_key(&secret),
            proto::RESPONSE_LABEL,
            &BINDING,
            rest,
        );
        let mut frame = Vec::new();
        if proto::write_frame(&mut frame, rest, tag.as_ref()).is_err() {
            return;
        }
        frame
    };
    match read_response(&mut &stream[..], &keys, &BINDING, "10.0.0.1:7443") {
        Ok(response) => {
            if let Some(text) = &response.material {
                if let Ok(material) = JoinMaterial::parse(text, "the answer of 10.0.0.1:7443") {
                    let _ = material.to_file_text();
                    let _ = material.server_url();
                }
            }
        }
        Err(cause) => {
            let _ = cause.to_string();
        }
    }
});
