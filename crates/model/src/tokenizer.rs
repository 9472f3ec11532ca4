//! Text -> token ids, as HF's BERT tokenizers do it.
//!
//! A model directory's `tokenizer.json` is used when present (it is exactly what HF's fast
//! tokenizer runs). Older checkpoints ship only `vocab.txt`; then the BERT WordPiece pipeline is
//! assembled here (normaliser with Chinese-character splitting, BERT pre-tokeniser, WordPiece,
//! `[CLS] ... [SEP]`), with `do_lower_case` read from `tokenizer_config.json`.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Tokenizer, TruncationParams};

use crate::bert::BertInput;
use crate::error::{ModelError, Result};

/// One tokenised text, before padding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded {
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

#[derive(Clone)]
pub struct BertTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    source: PathBuf,
}

impl std::fmt::Debug for BertTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertTokenizer")
            .field("source", &self.source)
            .finish()
    }
}

fn tok_error(path: &Path, message: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

impl BertTokenizer {
    /// From a model directory: `tokenizer.json`, else `vocab.txt` (+ `tokenizer_config.json`).
    pub fn from_dir(dir: &Path, max_length: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        let mut tok = if json.is_file() {
            Self::from_tokenizer_json(&json)?
        } else if vocab.is_file() {
            Self::from_vocab(&vocab, do_lower_case(dir)?)?
        } else {
            return Err(tok_error(
                dir,
                "neither tokenizer.json nor vocab.txt found in the model directory",
            ));
        };
        tok.set_max_length(max_length)?;
        Ok(tok)
    }

    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path).map_err(|e| tok_error(path, e))?;
        // Padding is the batcher's job (dynamic, to the longest item of a batch).
        inner.with_padding(None);
        let pad_id = inner.token_to_id("[PAD]").unwrap_or(0);
        Ok(Self {
            inner,
            pad_id,
            source: path.to_path_buf(),
        })
    }

    /// The BERT WordPiece pipeline of HF's `BertTokenizerFast`, built from `vocab.txt`.
    pub fn from_vocab(path: &Path, lowercase: bool) -> Result<Self> {
        let path_str = path
            .to_str()
            .ok_or_else(|| tok_error(path, "path is not valid UTF-8"))?;
        let wordpiece = WordPiece::from_file(path_str)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| tok_error(path, e))?;
        let mut inner = Tokenizer::new(wordpiece);
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| tok_error(path, format!("vocabulary has no {t} token")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        let pad_id = id("[PAD]").unwrap_or(0);
        inner.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)));
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
        Ok(Self {
            inner,
            pad_id,
            source: path.to_path_buf(),
        })
    }

    /// Truncate every encoding to `max_length` tokens, special tokens included.
    pub fn set_max_length(&mut self, max_length: usize) -> Result<()> {
        if max_length < 3 {
            return Err(tok_error(&self.source, "max_length must be at least 3"));
        }
        self.inner
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| tok_error(&self.source, e))?;
        Ok(())
    }

    /// The truncation length (special tokens included), if any.
    pub fn max_length(&self) -> Option<usize> {
        self.inner.get_truncation().map(|t| t.max_length)
    }

    /// The file the tokenizer was built from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// One past the largest id the tokenizer can produce (ids need not be contiguous).
    pub fn id_bound(&self) -> usize {
        self.inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&id| id as usize + 1)
    }

    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let text = clip_for_tokens(text);
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| tok_error(&self.source, e))?;
        Ok(Encoded {
            input_ids: enc.get_ids().to_vec(),
            token_type_ids: enc.get_type_ids().to_vec(),
        })
    }

    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Encoded>> {
        texts.iter().map(|t| self.encode(t)).collect()
    }
}

/// Bytes of a text that are tokenized: tokenizing costs time and memory in the whole text
/// (a 100 MB line would take gigabytes), while only the first `max_length` tokens (512 at
/// most for BERT) are kept, which a megabyte exceeds unless nearly all of it is whitespace.
pub const MAX_TEXT_BYTES: usize = 1 << 20;

/// The first [`MAX_TEXT_BYTES`] of `text`, cut at a character boundary.
fn clip_for_tokens(text: &str) -> &str {
    if text.len() <= MAX_TEXT_BYTES {
        return text;
    }
    let mut end = MAX_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `do_lower_case` from `tokenizer_config.json`; HF's BertTokenizer default is true.
fn do_lower_case(dir: &Path) -> Result<bool> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(true);
    }
    let text = crate::fsutil::read_small_text(&path)?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| tok_error(&path, e))?;
    Ok(value
        .get("do_lower_case")
        .and_then(|v| v.as_bool())
        .unwrap_or(true))
}

/// Pads a batch to its longest item (dynamic padding) and builds the model input.
pub fn pad_batch(items: &[Encoded], pad_id: u32, device: &Device) -> BertInput {
    let longest = items.iter().map(Encoded::len).max().unwrap_or(0);
    pad_batch_to(items, pad_id, longest, device)
}

/// The padded length for a batch whose longest item has `longest` tokens: `longest` itself, or
/// rounded up to a multiple of `step` but never past `cap` (the tokenizer's `max_length`). GPU
/// backends compile and autotune kernels per input shape, so a stream of batches padded to a
/// few lengths pays that cost a few times instead of once per length; padded positions are
/// masked, so the outputs of the real positions do not change.
pub fn bucketed_len(longest: usize, step: usize, cap: usize) -> usize {
    if step <= 1 || longest >= cap {
        return longest;
    }
    longest.div_ceil(step).saturating_mul(step).min(cap)
}

/// Batch lengths are padded to a multiple of this on `device`: 1 on the host; 8 on a GPU, where
/// kernels are compiled and autotuned for each new shape (measured on an H100 through wgpu:
/// ~150 ms a batch while shapes were new), so a stream of batches meets a few lengths only.
pub fn length_step(device: &Device) -> usize {
    if crate::kernels::is_host(device) {
        1
    } else {
        8
    }
}

/// [`pad_batch`] to `len` tokens (at least the longest item's).
pub fn pad_batch_to(items: &[Encoded], pad_id: u32, len: usize, device: &Device) -> BertInput {
    let batch = items.len();
    let longest = items.iter().map(Encoded::len).max().unwrap_or(0);
    let len = len.max(longest).max(1);
    let mut ids = vec![pad_id as i64; batch * len];
    let mut types = vec![0i64; batch * len];
    let mut mask = vec![0f32; batch * len];
    for (row, item) in items.iter().enumerate() {
        for (col, (&id, &ty)) in item.input_ids.iter().zip(&item.token_type_ids).enumerate() {
            ids[row * len + col] = id as i64;
            types[row * len + col] = ty as i64;
            mask[row * len + col] = 1.0;
        }
    }
    BertInput {
        input_ids: Tensor::from_data(TensorData::new(ids, [batch, len]), device),
        token_type_ids: Tensor::from_data(TensorData::new(types, [batch, len]), device),
        attention_mask: Tensor::from_data(TensorData::new(mask, [batch, len]), device),
    }
}

#[cfg(test)]
mod tests {
    use super::{BertTokenizer, MAX_TEXT_BYTES, bucketed_len, clip_for_tokens};

    #[test]
    fn long_texts_are_clipped_at_a_character_boundary() {
        assert_eq!(clip_for_tokens("short"), "short");
        let wide = "字".repeat(MAX_TEXT_BYTES);
        let clipped = clip_for_tokens(&wide);
        assert!(clipped.len() <= MAX_TEXT_BYTES && clipped.len() > MAX_TEXT_BYTES - 3);
    }

    #[test]
    fn clipping_keeps_the_tokens_of_the_whole_text() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-bert");
        let tok = BertTokenizer::from_dir(&dir, 16).unwrap();
        for text in [
            "You Won't Believe What Happened Next ".repeat(40_000),
            format!("{}{}", " ".repeat(5_000), "late words ".repeat(100_000)),
        ] {
            assert!(text.len() > MAX_TEXT_BYTES);
            let whole = tok.inner.encode(text.as_str(), true).unwrap();
            assert_eq!(tok.encode(&text).unwrap().input_ids, whole.get_ids());
        }
    }

    #[test]
    fn lengths_round_up_to_their_step_within_the_cap() {
        assert_eq!(bucketed_len(13, 1, 32), 13);
        assert_eq!(bucketed_len(13, 8, 32), 16);
        assert_eq!(bucketed_len(16, 8, 32), 16);
        assert_eq!(bucketed_len(29, 8, 30), 30);
        assert_eq!(bucketed_len(0, 8, 32), 0);
        // A longest item past the cap (no truncation configured) is left as it is.
        assert_eq!(bucketed_len(40, 8, 32), 40);
    }
}
