//! Lines of text from a stream (stdin), each bounded in memory.
//!
//! A line longer than [`MAX_LINE_BYTES`] keeps its first bytes (cut at a character boundary)
//! and the rest is skipped without being stored, so one endless line cannot exhaust memory.
//! Nothing is lost that a model would read: the tokenizer reads no more of a text.

use std::io::BufRead;

use anyhow::{Result, bail};

/// Bytes kept of one line: as many as the tokenizer reads of a text.
pub const MAX_LINE_BYTES: usize = bert_model::tokenizer::MAX_TEXT_BYTES;

/// Lines of `reader` without their `\n` / `\r\n`, as UTF-8; `name` (e.g. `stdin`) is used in
/// errors with the line number.
pub struct BoundedLines<R> {
    reader: R,
    name: &'static str,
    line: usize,
}

impl<R: BufRead> BoundedLines<R> {
    pub fn new(reader: R, name: &'static str) -> Self {
        Self {
            reader,
            name,
            line: 0,
        }
    }

    /// The next line's bytes (at most [`MAX_LINE_BYTES`]), or `None` at the end.
    fn next_bytes(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        let mut read_any = false;
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                break;
            }
            read_any = true;
            let newline = chunk.iter().position(|&b| b == b'\n');
            let end = newline.unwrap_or(chunk.len());
            let room = MAX_LINE_BYTES.saturating_sub(line.len());
            line.extend_from_slice(&chunk[..end.min(room)]);
            self.reader.consume(newline.map_or(end, |i| i + 1));
            if newline.is_some() {
                break;
            }
        }
        if !read_any {
            return Ok(None);
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(Some(line))
    }
}

impl<R: BufRead> Iterator for BoundedLines<R> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        let bytes = match self.next_bytes() {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(e) => return Some(Err(anyhow::anyhow!("{}: {e}", self.name))),
        };
        self.line += 1;
        Some(utf8(bytes).or_else(|()| bail!("{}:{}: invalid UTF-8", self.name, self.line)))
    }
}

/// `bytes` as text; a character cut in two by the length bound is dropped, any other invalid
/// sequence is an error.
fn utf8(mut bytes: Vec<u8>) -> std::result::Result<String, ()> {
    match std::str::from_utf8(&bytes) {
        Ok(_) => {}
        Err(e) if e.error_len().is_none() && bytes.len() >= MAX_LINE_BYTES => {
            bytes.truncate(e.valid_up_to());
        }
        Err(_) => return Err(()),
    }
    String::from_utf8(bytes).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<String> {
        BoundedLines::new(input, "stdin")
            .collect::<Result<_>>()
            .unwrap()
    }

    #[test]
    fn splits_like_std_lines() {
        assert_eq!(lines(b"a\nb\r\n\nc"), ["a", "b", "", "c"]);
        assert_eq!(lines(b"a\n"), ["a"]);
        assert!(lines(b"").is_empty());
    }

    #[test]
    fn long_lines_keep_their_start_and_the_next_line_follows() {
        let mut input = "é".repeat(MAX_LINE_BYTES).into_bytes();
        input.extend_from_slice(b"\nnext\n");
        let got = lines(&input);
        assert_eq!(got.len(), 2);
        assert!(got[0].len() <= MAX_LINE_BYTES && got[0].len() > MAX_LINE_BYTES - 4);
        assert!(got[0].chars().all(|c| c == 'é'));
        assert_eq!(got[1], "next");
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let e = BoundedLines::new(&b"ok\n\xff\n"[..], "stdin")
            .collect::<Result<Vec<_>>>()
            .unwrap_err()
            .to_string();
        assert_eq!(e, "stdin:2: invalid UTF-8");
    }
}
