//! sealer's `Kubefile`, as far as a node needs it: the `LABEL`s that name the cluster and
//! container runtime, and the commands to launch once the cluster is up (`CMD`, `CMDS`,
//! and `APP`/`CNI`/`CSI` applications started by `LAUNCH`). Build-time instructions
//! (`FROM`, `COPY`, `RUN`, `ENV` …) are sealer's business and are skipped.

use std::collections::BTreeMap;

use serde::Serialize;

/// The label naming the cluster runtime (`kubernetes`, `k0s`, `k3s`).
pub const CLUSTER_RUNTIME_TYPE: &str = "cluster.alpha.sealer.io/cluster-runtime-type";
/// The label naming the cluster runtime's version (`v1.22.15`).
pub const CLUSTER_RUNTIME_VERSION: &str = "cluster.alpha.sealer.io/cluster-runtime-version";
/// The label naming the container runtime (`containerd`, `docker`).
pub const CONTAINER_RUNTIME_TYPE: &str = "cluster.alpha.sealer.io/container-runtime-type";

/// Why a Kubefile could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct KubefileError {
    pub line: usize,
    pub reason: String,
}

/// What a node takes from a Kubefile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Kubefile {
    pub labels: BTreeMap<String, String>,
    /// What to run once the cluster is ready, in Kubefile order.
    pub launch: Vec<Launch>,
}

/// One thing to run after the cluster is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Launch {
    /// A shell line (`CMD kubectl apply -f x`, or one entry of `CMDS [...]`): sealer
    /// defines these as shell lines, so a shell runs them.
    Shell { line: String, at: usize },
    /// A command without a shell (`CMD ["kubectl", "apply", "-f", "x"]`).
    Exec { argv: Vec<String>, at: usize },
    /// An application named by `LAUNCH`, with the files its `APP` line gave
    /// (`local://` paths, relative to the image's build context), and the shell lines of
    /// its `APPCMDS` when it has them (run instead of the default launch).
    App {
        name: String,
        files: Vec<String>,
        cmds: Vec<String>,
        at: usize,
    },
}

impl Launch {
    /// The Kubefile line it came from.
    pub fn line_number(&self) -> usize {
        match self {
            Launch::Shell { at, .. } | Launch::Exec { at, .. } | Launch::App { at, .. } => *at,
        }
    }
}

impl std::fmt::Display for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Launch::Shell { line, at } => write!(f, "line {at}: {line}"),
            Launch::Exec { argv, at } => write!(f, "line {at}: {}", argv.join(" ")),
            Launch::App {
                name, files, cmds, ..
            } if cmds.is_empty() => write!(f, "app {name} ({})", files.join(", ")),
            Launch::App { name, cmds, .. } => write!(f, "app {name}: {}", cmds.join("; ")),
        }
    }
}

impl Kubefile {
    /// Parses a Kubefile's text.
    pub fn parse(text: &str) -> Result<Kubefile, KubefileError> {
        let mut out = Kubefile::default();
        let mut apps: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
        let mut order: Vec<Entry> = Vec::new();
        for (at, line) in logical_lines(text) {
            let err = |reason: String| KubefileError { line: at, reason };
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            let rest = rest.trim();
            match word.to_ascii_uppercase().as_str() {
                "LABEL" => {
                    for (key, value) in labels(rest).map_err(err)? {
                        out.labels.insert(key, value);
                    }
                }
                "CMD" if rest.starts_with('[') => {
                    let argv = json_list(rest).map_err(err)?;
                    if argv.is_empty() {
                        return Err(err("CMD [] names no command".into()));
                    }
                    order.push(Entry::Launch(Launch::Exec { argv, at }));
                }
                "CMD" => {
                    if rest.is_empty() {
                        return Err(err("CMD without a command".into()));
                    }
                    order.push(Entry::Launch(Launch::Shell {
                        line: rest.to_owned(),
                        at,
                    }));
                }
                "CMDS" => {
                    for line in json_list(rest).map_err(err)? {
                        order.push(Entry::Launch(Launch::Shell { line, at }));
                    }
                }
                "APP" | "CNI" | "CSI" => {
                    let mut parts = rest.split_whitespace();
                    let name = parts
                        .next()
                        .ok_or_else(|| err(format!("{word} without a name")))?;
                    let mut files = Vec::new();
                    for source in parts {
                        files.push(app_source(word, name, source).map_err(err)?);
                    }
                    if files.is_empty() {
                        return Err(err(format!("{word} {name} names no file")));
                    }
                    apps.entry(name.to_owned()).or_default().0 = files;
                }
                "APPCMDS" => {
                    let (name, list) = rest
                        .split_once(char::is_whitespace)
                        .ok_or_else(|| err("APPCMDS needs a name and a list".into()))?;
                    apps.entry(name.to_owned()).or_default().1 =
                        json_list(list.trim()).map_err(err)?;
                }
                "LAUNCH" => {
                    order.push(Entry::Apps(json_list(rest).map_err(err)?, at));
                }
                _ => {}
            }
        }
        for entry in order {
            match entry {
                Entry::Launch(l) => out.launch.push(l),
                Entry::Apps(names, at) => {
                    for name in names {
                        let (files, cmds) = apps.get(&name).cloned().unwrap_or_default();
                        if files.is_empty() && cmds.is_empty() {
                            return Err(KubefileError {
                                line: at,
                                reason: format!(
                                    "LAUNCH names {name:?}, which no APP, CNI or CSI line defines"
                                ),
                            });
                        }
                        out.launch.push(Launch::App {
                            name,
                            files,
                            cmds,
                            at,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// A launch in Kubefile order; `LAUNCH` is expanded once every `APP` is known (an
/// `APP` may follow the `LAUNCH` that names it).
enum Entry {
    Launch(Launch),
    Apps(Vec<String>, usize),
}

/// Lines with `\` continuations joined, comments and blank lines dropped, each with the
/// number of the line it starts on.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let trimmed = raw.trim();
        if current.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        let (start, mut text) = current.take().unwrap_or((number, String::new()));
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                text.push_str(head);
                text.push(' ');
                current = Some((start, text));
            }
            None => {
                text.push_str(trimmed);
                out.push((start, text.trim().to_owned()));
            }
        }
    }
    if let Some((start, text)) = current {
        out.push((start, text.trim().to_owned()));
    }
    out
}

/// Where an `APP` source is in the built image: a `local://` path as written, and a file
/// `sealer build` downloaded (`https://…/x.yaml`) by its name.
fn app_source(word: &str, name: &str, source: &str) -> Result<String, String> {
    if let Some(path) = source.strip_prefix("local://") {
        return Ok(path.trim_start_matches("./").to_owned());
    }
    if source.starts_with("https://") || source.starts_with("http://") {
        let path = source.split(['?', '#']).next().unwrap_or_default();
        let file = path.rsplit('/').next().unwrap_or_default();
        if !file.is_empty() && !path.ends_with("//") && path.matches('/').count() > 2 {
            return Ok(file.to_owned());
        }
    }
    Err(format!(
        "{word} {name}: {source:?} is neither local://PATH nor an http(s):// file, as sealer takes them"
    ))
}

/// `["a", "b"]`.
fn json_list(text: &str) -> Result<Vec<String>, String> {
    serde_json::from_str(text).map_err(|e| format!("expected a JSON list of strings: {e}"))
}

/// `k=v k2="v 2"`, or the old single `key value` form.
fn labels(text: &str) -> Result<Vec<(String, String)>, String> {
    if text.is_empty() {
        return Err("LABEL without a key".into());
    }
    let first_space = text.find(char::is_whitespace);
    let first_eq = text.find('=');
    if first_eq.is_none() || first_space.is_some_and(|s| first_eq.is_some_and(|e| s < e)) {
        let (key, value) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        return Ok(vec![(unquote(key)?, unquote(value.trim())?)]);
    }
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let key = word(&mut chars, true)?;
        if chars.next() != Some('=') {
            return Err(format!("LABEL {key}: expected key=value"));
        }
        let value = word(&mut chars, false)?;
        out.push((key, value));
    }
    Ok(out)
}

/// One word, possibly quoted; a key stops at `=`.
fn word(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, key: bool) -> Result<String, String> {
    let mut out = String::new();
    if let Some(q @ ('"' | '\'')) = chars.peek().copied() {
        chars.next();
        loop {
            match chars.next() {
                Some(c) if c == q => return Ok(out),
                Some('\\') if q == '"' => match chars.next() {
                    Some(c) => out.push(c),
                    None => break,
                },
                Some(c) => out.push(c),
                None => break,
            }
        }
        return Err(format!("unterminated quote after {out:?}"));
    }
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() || (key && c == '=') {
            break;
        }
        chars.next();
        out.push(c);
    }
    if key && out.is_empty() {
        return Err("LABEL with an empty key".into());
    }
    Ok(out)
}

fn unquote(text: &str) -> Result<String, String> {
    let mut chars = text.chars().peekable();
    if text.starts_with(['"', '\'']) {
        word(&mut chars, false)
    } else {
        Ok(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labels_and_launch_commands_in_order() {
        let text = r#"# a sealer image
FROM scratch
COPY . .
LABEL cluster.alpha.sealer.io/cluster-runtime-type="kubernetes" \
      cluster.alpha.sealer.io/cluster-runtime-version=v1.22.15
LABEL cluster.alpha.sealer.io/container-runtime-type='docker'
LABEL maintainer someone
CMD kubectl apply -f manifests/a.yaml && echo "done"
LAUNCH ["calico"]
CNI calico local://calico.sh
CMDS ["kubectl get nodes", "kubectl get pods -A"]
cmd ["kubectl", "version"]
"#;
        let k = Kubefile::parse(text).unwrap();
        assert_eq!(k.label(CLUSTER_RUNTIME_TYPE), Some("kubernetes"));
        assert_eq!(k.label(CLUSTER_RUNTIME_VERSION), Some("v1.22.15"));
        assert_eq!(k.label(CONTAINER_RUNTIME_TYPE), Some("docker"));
        assert_eq!(k.label("maintainer"), Some("someone"));
        assert_eq!(
            k.launch,
            vec![
                Launch::Shell {
                    line: r#"kubectl apply -f manifests/a.yaml && echo "done""#.into(),
                    at: 8
                },
                Launch::App {
                    name: "calico".into(),
                    files: vec!["calico.sh".into()],
                    cmds: vec![],
                    at: 9
                },
                Launch::Shell {
                    line: "kubectl get nodes".into(),
                    at: 11
                },
                Launch::Shell {
                    line: "kubectl get pods -A".into(),
                    at: 11
                },
                Launch::Exec {
                    argv: vec!["kubectl".into(), "version".into()],
                    at: 12
                },
            ]
        );
    }

    #[test]
    fn refuses_what_it_cannot_launch() {
        let err = Kubefile::parse("LAUNCH [\"nope\"]\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.reason.contains("\"nope\""), "{err}");
        let err = Kubefile::parse("APP x oci://example.invalid/chart\n").unwrap_err();
        assert!(err.reason.contains("neither local://PATH"), "{err}");
        // sealer build downloaded it into the image: found by its name.
        let k =
            Kubefile::parse("APP x https://example.invalid/deploy/x.yaml?raw=1\nLAUNCH [\"x\"]\n")
                .unwrap();
        assert!(
            matches!(&k.launch[0], Launch::App { files, .. } if files == &["x.yaml".to_owned()]),
            "{k:?}"
        );
        let err = Kubefile::parse("\n\nCMDS kubectl get nodes\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(Kubefile::parse("LABEL a=\"open\n").is_err());
    }

    #[test]
    fn appcmds_replace_the_default_launch() {
        let k = Kubefile::parse(
            "APP web local://web.yaml\nAPPCMDS web [\"kubectl apply -f web.yaml -n web\"]\nLAUNCH [\"web\"]\n",
        )
        .unwrap();
        assert_eq!(
            k.launch,
            vec![Launch::App {
                name: "web".into(),
                files: vec!["web.yaml".into()],
                cmds: vec!["kubectl apply -f web.yaml -n web".into()],
                at: 3
            }]
        );
    }
}
