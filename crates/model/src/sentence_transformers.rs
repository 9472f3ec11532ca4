//! A model directory's sentence-transformers pipeline, so that embeddings are what the model's
//! own `SentenceTransformer(...).encode(...)` returns.
//!
//! sentence-transformers saves, beside the HF files, `modules.json`: the modules a text goes
//! through, in order. For BERT-like models that is the `Transformer` (the directory itself,
//! with `sentence_bert_config.json` for `max_seq_length` and `do_lower_case`), a `Pooling`
//! module (`1_Pooling/config.json`: which pooling mode) and often a `Normalize` module
//! (`2_Normalize`, which has no files and may be absent). all-MiniLM-L6-v2 is exactly that.
//!
//! Only that shape is understood: any other module (`Dense`, `LayerNorm`, `CNN`, ...) or
//! pooling mode (`weightedmean`, `lasttoken`, several modes concatenated) is an error naming
//! the file and the module, never an embedding that silently differs.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::fsutil::read_small_text;
use crate::pooling::Pooling;

/// The module list sentence-transformers writes in a model directory.
pub const MODULES_FILE: &str = "modules.json";
/// The Transformer module's settings when it is the directory itself.
pub const SBERT_CONFIG_FILE: &str = "sentence_bert_config.json";

/// What the model's sentence-transformers pipeline does after the encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentencePipeline {
    /// The `modules.json` this came from.
    pub modules: PathBuf,
    /// The Pooling module's mode; `None` when `modules.json` lists no Pooling module.
    pub pooling: Option<Pooling>,
    /// The Pooling module's `word_embedding_dimension` and the file it is in.
    pub pooling_dimension: Option<(usize, PathBuf)>,
    /// A Normalize module follows the pooling: unit-length embeddings.
    pub normalize: bool,
    /// `sentence_bert_config.json`'s `max_seq_length`: tokens per text, special ones included.
    pub max_seq_length: Option<usize>,
    /// `sentence_bert_config.json`'s `do_lower_case`: texts are lower-cased before tokenising.
    pub do_lower_case: bool,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Transformer,
    Pooling,
    Normalize,
}

impl Kind {
    /// `sentence_transformers.models.Pooling` (or `...models.Pooling.Pooling`, the class by its
    /// module path); anything else is not a module this crate runs.
    fn of(type_name: &str) -> Option<Self> {
        let rest = type_name.strip_prefix("sentence_transformers.models.")?;
        let class = match rest.split_once('.') {
            None => rest,
            Some((module, class)) if module == class => class,
            Some(_) => return None,
        };
        match class {
            "Transformer" => Some(Self::Transformer),
            "Pooling" => Some(Self::Pooling),
            "Normalize" => Some(Self::Normalize),
            _ => None,
        }
    }
}

fn error(path: &Path, message: impl std::fmt::Display) -> ModelError {
    ModelError::Other(format!("{}: {message}", path.display()))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = read_small_text(path)?;
    serde_json::from_str(&text).map_err(|e| error(path, format!("malformed JSON: {e}")))
}

/// A module's `path`, relative and inside the model directory.
fn module_dir(dir: &Path, modules: &Path, path: &str) -> Result<PathBuf> {
    let rel = Path::new(path);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(error(
            modules,
            format!("module path `{path}` is not a folder inside the model directory"),
        ));
    }
    Ok(dir.join(rel))
}

impl SentencePipeline {
    /// Reads `dir/modules.json` and the files of the modules it lists; `Ok(None)` when the
    /// directory has no `modules.json` (not a sentence-transformers model).
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let modules = dir.join(MODULES_FILE);
        if !modules.is_file() {
            return Ok(None);
        }
        let entries: Vec<ModuleEntry> =
            serde_json::from_value(read_json(&modules)?).map_err(|e| {
                error(
                    &modules,
                    format!("not a sentence-transformers module list: {e}"),
                )
            })?;
        let mut pipeline = Self {
            modules: modules.clone(),
            pooling: None,
            pooling_dimension: None,
            normalize: false,
            max_seq_length: None,
            do_lower_case: false,
        };
        let mut last: Option<Kind> = None;
        for (i, entry) in entries.iter().enumerate() {
            let named = || {
                if entry.path.is_empty() {
                    format!("`{}`", entry.kind)
                } else {
                    format!("`{}` ({})", entry.kind, entry.path)
                }
            };
            let Some(kind) = Kind::of(&entry.kind) else {
                return Err(error(
                    &modules,
                    format!(
                        "module {} is not supported (only Transformer, Pooling and Normalize are), \
                         so these embeddings would differ from sentence-transformers'",
                        named()
                    ),
                ));
            };
            // Transformer first, then at most one Pooling, then at most one Normalize.
            let in_order = match (last, kind) {
                (None, Kind::Transformer) => true,
                (Some(prev), Kind::Pooling | Kind::Normalize) => prev < kind,
                _ => false,
            };
            if !in_order {
                return Err(error(
                    &modules,
                    format!(
                        "module {i}, {}, is out of place (supported: Transformer, then Pooling, then Normalize)",
                        named()
                    ),
                ));
            }
            last = Some(kind);
            match kind {
                Kind::Transformer => {
                    if !entry.path.is_empty() {
                        return Err(error(
                            &modules,
                            format!(
                                "the Transformer module is in `{}`, not in the model directory itself (not supported)",
                                entry.path
                            ),
                        ));
                    }
                    pipeline.read_sbert_config(dir)?;
                }
                Kind::Pooling => {
                    let config = module_dir(dir, &modules, &entry.path)?.join("config.json");
                    let (pooling, dimension) = read_pooling(&config)?;
                    pipeline.pooling = Some(pooling);
                    pipeline.pooling_dimension = dimension.map(|d| (d, config));
                }
                // Normalize has no files (and `2_Normalize` is often not even saved).
                Kind::Normalize => pipeline.normalize = true,
            }
        }
        if last.is_none() {
            return Err(error(&modules, "lists no modules"));
        }
        Ok(Some(pipeline))
    }

    /// Fails unless the Pooling module was set up for hidden states of `hidden_size`.
    pub fn check_hidden_size(&self, hidden_size: usize) -> Result<()> {
        match &self.pooling_dimension {
            Some((dim, path)) if *dim != hidden_size => Err(error(
                path,
                format!(
                    "word_embedding_dimension is {dim}, but the model's hidden size is {hidden_size}"
                ),
            )),
            _ => Ok(()),
        }
    }

    fn read_sbert_config(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(SBERT_CONFIG_FILE);
        if !path.is_file() {
            return Ok(());
        }
        let value = read_json(&path)?;
        let Some(fields) = value.as_object() else {
            return Err(error(&path, "expected a JSON object"));
        };
        match fields.get("max_seq_length") {
            None | Some(serde_json::Value::Null) => {}
            Some(v) => {
                let n = v.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
                    error(
                        &path,
                        format!("max_seq_length is {v}, not a positive integer"),
                    )
                })?;
                self.max_seq_length = Some(usize::try_from(n).unwrap_or(usize::MAX));
            }
        }
        match fields.get("do_lower_case") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Bool(b)) => self.do_lower_case = *b,
            Some(v) => return Err(error(&path, format!("do_lower_case is {v}, not a boolean"))),
        }
        Ok(())
    }
}

/// The pooling modes sentence-transformers' `Pooling(...)` takes as flags, with its defaults
/// (mean on unless switched off), and what this crate runs for each.
const MODE_FLAGS: &[(&str, bool, Option<Pooling>)] = &[
    ("pooling_mode_cls_token", false, Some(Pooling::Cls)),
    ("pooling_mode_mean_tokens", true, Some(Pooling::Mean)),
    ("pooling_mode_max_tokens", false, Some(Pooling::Max)),
    (
        "pooling_mode_mean_sqrt_len_tokens",
        false,
        Some(Pooling::MeanSqrtLen),
    ),
    ("pooling_mode_weightedmean_tokens", false, None),
    ("pooling_mode_lasttoken", false, None),
];

/// A Pooling module's `config.json`: its one mode and `word_embedding_dimension`.
fn read_pooling(path: &Path) -> Result<(Pooling, Option<usize>)> {
    let value = read_json(path)?;
    let Some(fields) = value.as_object() else {
        return Err(error(path, "expected a JSON object"));
    };
    let dimension = match fields.get("word_embedding_dimension") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    error(
                        path,
                        format!("word_embedding_dimension is {v}, not a positive integer"),
                    )
                })?,
        ),
    };
    let mut on: Vec<(&str, Option<Pooling>)> = Vec::new();
    // `pooling_mode: "mean"` (a string) overrides the flags, as in sentence-transformers.
    if let Some(mode) = fields.get("pooling_mode").filter(|v| !v.is_null()) {
        let name = mode
            .as_str()
            .ok_or_else(|| error(path, format!("pooling_mode is {mode}, not a string")))?
            .to_lowercase();
        let pooling = match name.as_str() {
            "mean" => Some(Pooling::Mean),
            "cls" => Some(Pooling::Cls),
            "max" => Some(Pooling::Max),
            "weightedmean" | "lasttoken" => None,
            other => {
                return Err(error(path, format!("unknown pooling_mode `{other}`")));
            }
        };
        on.push(("pooling_mode", pooling));
    } else {
        for &(flag, default, pooling) in MODE_FLAGS {
            let set = match fields.get(flag) {
                None | Some(serde_json::Value::Null) => default,
                Some(serde_json::Value::Bool(b)) => *b,
                Some(v) => return Err(error(path, format!("{flag} is {v}, not a boolean"))),
            };
            if set {
                on.push((flag, pooling));
            }
        }
        if let Some(flag) = fields
            .keys()
            .find(|k| k.starts_with("pooling_mode_") && !MODE_FLAGS.iter().any(|m| m.0 == *k))
            && fields[flag].as_bool() == Some(true)
        {
            return Err(error(path, format!("pooling mode {flag} is not supported")));
        }
    }
    match on.as_slice() {
        [(_, Some(pooling))] => Ok((*pooling, dimension)),
        [(flag, None)] => Err(error(
            path,
            format!(
                "pooling mode {flag} is not supported (cls, mean, max and mean_sqrt_len are), \
                 so these embeddings would differ from sentence-transformers'"
            ),
        )),
        [] => Err(error(path, "no pooling mode is switched on")),
        several => Err(error(
            path,
            format!(
                "several pooling modes are on ({}), which sentence-transformers concatenates; \
                 only one is supported",
                several
                    .iter()
                    .map(|(f, _)| *f)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    const MINILM_MODULES: &str = r#"[
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
      {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
    ]"#;

    fn pooling_config(modes: &str) -> String {
        format!(r#"{{"word_embedding_dimension": 32, {modes}}}"#)
    }

    fn minilm_like(modes: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), MODULES_FILE, MINILM_MODULES);
        write(dir.path(), "1_Pooling/config.json", &pooling_config(modes));
        dir
    }

    fn read_err(dir: &Path) -> String {
        let e = SentencePipeline::read(dir).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn no_modules_json_is_no_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(SentencePipeline::read(dir.path()).unwrap(), None);
    }

    #[test]
    fn reads_the_minilm_layout() {
        let dir = minilm_like(
            r#""pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true,
               "pooling_mode_max_tokens": false, "pooling_mode_mean_sqrt_len_tokens": false"#,
        );
        write(
            dir.path(),
            SBERT_CONFIG_FILE,
            r#"{"max_seq_length": 256, "do_lower_case": false}"#,
        );
        let p = SentencePipeline::read(dir.path()).unwrap().unwrap();
        assert_eq!(p.pooling, Some(Pooling::Mean));
        assert!(p.normalize);
        assert_eq!(p.max_seq_length, Some(256));
        assert!(!p.do_lower_case);
        p.check_hidden_size(32).unwrap();
        let e = p.check_hidden_size(384).unwrap_err().to_string();
        assert!(
            e.contains("1_Pooling/config.json") && e.contains("384"),
            "{e}"
        );
    }

    #[test]
    fn pooling_modes_follow_sentence_transformers_defaults() {
        for (modes, want) in [
            (
                r#""pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false"#,
                Pooling::Cls,
            ),
            (
                r#""pooling_mode_max_tokens": true, "pooling_mode_mean_tokens": false"#,
                Pooling::Max,
            ),
            (
                r#""pooling_mode_mean_sqrt_len_tokens": true, "pooling_mode_mean_tokens": false"#,
                Pooling::MeanSqrtLen,
            ),
            // Mean is sentence-transformers' default when the flag is absent.
            (r#""include_prompt": true"#, Pooling::Mean),
            (r#""pooling_mode": "CLS""#, Pooling::Cls),
        ] {
            let dir = minilm_like(modes);
            let p = SentencePipeline::read(dir.path()).unwrap().unwrap();
            assert_eq!(p.pooling, Some(want), "{modes}");
        }
        for (modes, needle) in [
            (r#""pooling_mode_cls_token": true"#, "several pooling modes"),
            (
                r#""pooling_mode_weightedmean_tokens": true, "pooling_mode_mean_tokens": false"#,
                "pooling_mode_weightedmean_tokens is not supported",
            ),
            (r#""pooling_mode_mean_tokens": false"#, "no pooling mode"),
            (r#""pooling_mode_mean_tokens": "yes""#, "not a boolean"),
            (r#""pooling_mode": "lasttoken""#, "not supported"),
        ] {
            let dir = minilm_like(modes);
            let e = read_err(dir.path());
            assert!(
                e.contains("1_Pooling/config.json") && e.contains(needle),
                "{e}"
            );
        }
    }

    #[test]
    fn unsupported_modules_and_malformed_files_are_one_line_errors() {
        let dir = minilm_like(r#""pooling_mode_mean_tokens": true"#);
        write(
            dir.path(),
            MODULES_FILE,
            &MINILM_MODULES.replace(
                "2_Normalize\", \"type\": \"sentence_transformers.models.Normalize",
                "2_Dense\", \"type\": \"sentence_transformers.models.Dense",
            ),
        );
        let e = read_err(dir.path());
        assert!(
            e.contains("modules.json")
                && e.contains("sentence_transformers.models.Dense")
                && e.contains("2_Dense"),
            "{e}"
        );

        write(dir.path(), MODULES_FILE, "[{\"path\": \"\", ");
        let e = read_err(dir.path());
        assert!(e.contains("modules.json: malformed JSON"), "{e}");

        write(dir.path(), MODULES_FILE, r#"{"0": "Transformer"}"#);
        assert!(read_err(dir.path()).contains("not a sentence-transformers module list"));

        write(dir.path(), MODULES_FILE, MINILM_MODULES);
        write(dir.path(), "1_Pooling/config.json", "{not json");
        let e = read_err(dir.path());
        assert!(e.contains("1_Pooling/config.json: malformed JSON"), "{e}");

        std::fs::remove_file(dir.path().join("1_Pooling/config.json")).unwrap();
        assert!(read_err(dir.path()).contains("1_Pooling/config.json"));

        write(
            dir.path(),
            "1_Pooling/config.json",
            &pooling_config("\"include_prompt\": true"),
        );
        write(dir.path(), SBERT_CONFIG_FILE, r#"{"max_seq_length": -3}"#);
        let e = read_err(dir.path());
        assert!(
            e.contains("sentence_bert_config.json") && e.contains("max_seq_length"),
            "{e}"
        );
    }

    #[test]
    fn module_order_and_paths_are_checked() {
        let dir = minilm_like(r#""pooling_mode_mean_tokens": true"#);
        for (modules, needle) in [
            (
                r#"[{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]"#,
                "out of place",
            ),
            (
                r#"[{"path": "", "type": "sentence_transformers.models.Transformer"},
                    {"path": "", "type": "sentence_transformers.models.Normalize"},
                    {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]"#,
                "out of place",
            ),
            (
                r#"[{"path": "0_Transformer", "type": "sentence_transformers.models.Transformer"}]"#,
                "0_Transformer",
            ),
            (
                r#"[{"path": "", "type": "sentence_transformers.models.Transformer"},
                    {"path": "../1_Pooling", "type": "sentence_transformers.models.Pooling"}]"#,
                "not a folder inside",
            ),
            ("[]", "lists no modules"),
            (
                r#"[{"path": "", "type": "my_package.CustomModule"}]"#,
                "`my_package.CustomModule` is not supported",
            ),
        ] {
            write(dir.path(), MODULES_FILE, modules);
            let e = read_err(dir.path());
            assert!(
                e.contains("modules.json") && e.contains(needle),
                "{modules}: {e}"
            );
        }
        // Transformer alone: no pooling to follow, no normalisation.
        write(
            dir.path(),
            MODULES_FILE,
            r#"[{"path": "", "type": "sentence_transformers.models.Transformer"}]"#,
        );
        let p = SentencePipeline::read(dir.path()).unwrap().unwrap();
        assert_eq!((p.pooling, p.normalize), (None, false));
    }
}
