//! KV budgets: how much sequence state a method may keep.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How much a method may keep, in the three forms the benchmark uses.
///
/// - [`Budget::Ratio`]: a compression ratio of the input length, as the paper's 2x/4x/6x/8x
///   (`Ratio(4.0)` keeps `floor(len / 4)` tokens).
/// - [`Budget::Tokens`]: an absolute number of tokens per layer.
/// - [`Budget::Bytes`]: bytes of KV state per layer; a method converts it to tokens with its own
///   bytes-per-token.
/// - [`Budget::Unlimited`]: no limit (the `full` cache, or quantization, whose ratio follows from
///   the bit width).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Budget {
    Unlimited,
    Ratio(f64),
    Tokens(usize),
    Bytes(usize),
}

impl Budget {
    /// Tokens a layer may keep for an input of `input_tokens` tokens, given the method's storage
    /// cost of `bytes_per_token` bytes per token in this layer. `None` means unlimited.
    pub fn tokens_for(&self, input_tokens: usize, bytes_per_token: usize) -> Option<usize> {
        match *self {
            Budget::Unlimited => None,
            Budget::Ratio(r) => Some((input_tokens as f64 / r).floor() as usize),
            Budget::Tokens(t) => Some(t),
            Budget::Bytes(b) => Some(b / bytes_per_token.max(1)),
        }
    }

    /// Whether this budget limits anything.
    pub fn is_limited(&self) -> bool {
        !matches!(self, Budget::Unlimited)
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Unlimited => write!(f, "unlimited"),
            Budget::Ratio(r) => write!(f, "{r}x"),
            Budget::Tokens(t) => write!(f, "{t}tok"),
            Budget::Bytes(b) => write!(f, "{b}B"),
        }
    }
}

impl FromStr for Budget {
    type Err = Error;

    /// Parses `unlimited` (or `full`), `4x`, `1024tok`, `65536B`, `64KiB`, `2MiB`.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let bad = |why: &str| {
            Error::Budget(format!(
                "cannot parse budget '{s}': {why} (expected unlimited, <r>x, <n>tok, <n>B, <n>KiB or <n>MiB)"
            ))
        };
        if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("full") {
            return Ok(Budget::Unlimited);
        }
        let (num, mul, kind) = if let Some(n) = t.strip_suffix('x') {
            (n, 1, 'r')
        } else if let Some(n) = t.strip_suffix("tok") {
            (n, 1, 't')
        } else if let Some(n) = t.strip_suffix("MiB") {
            (n, 1 << 20, 'b')
        } else if let Some(n) = t.strip_suffix("KiB") {
            (n, 1 << 10, 'b')
        } else if let Some(n) = t.strip_suffix('B') {
            (n, 1, 'b')
        } else {
            return Err(bad("unknown unit"));
        };
        match kind {
            'r' => {
                let r: f64 = num.parse().map_err(|_| bad("not a number"))?;
                if !(r >= 1.0 && r.is_finite()) {
                    return Err(bad("a ratio must be a finite number >= 1"));
                }
                Ok(Budget::Ratio(r))
            }
            't' => Ok(Budget::Tokens(
                num.parse().map_err(|_| bad("not an integer"))?,
            )),
            _ => {
                let n: usize = num.parse().map_err(|_| bad("not an integer"))?;
                Ok(Budget::Bytes(n * mul))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("4x".parse::<Budget>().unwrap(), Budget::Ratio(4.0));
        assert_eq!("1024tok".parse::<Budget>().unwrap(), Budget::Tokens(1024));
        assert_eq!("2KiB".parse::<Budget>().unwrap(), Budget::Bytes(2048));
        assert_eq!("1MiB".parse::<Budget>().unwrap(), Budget::Bytes(1 << 20));
        assert_eq!("100B".parse::<Budget>().unwrap(), Budget::Bytes(100));
        assert_eq!("full".parse::<Budget>().unwrap(), Budget::Unlimited);
        assert!("0.5x".parse::<Budget>().is_err());
        assert!("abc".parse::<Budget>().is_err());
        assert!("12".parse::<Budget>().is_err());
    }

    #[test]
    fn resolves_tokens() {
        assert_eq!(Budget::Ratio(4.0).tokens_for(1000, 8), Some(250));
        assert_eq!(Budget::Tokens(7).tokens_for(1000, 8), Some(7));
        assert_eq!(Budget::Bytes(800).tokens_for(1000, 8), Some(100));
        assert_eq!(Budget::Unlimited.tokens_for(1000, 8), None);
    }

    #[test]
    fn display_round_trips() {
        for b in [
            Budget::Ratio(2.0),
            Budget::Tokens(5),
            Budget::Bytes(9),
            Budget::Unlimited,
        ] {
            assert_eq!(b.to_string().parse::<Budget>().unwrap(), b);
        }
    }
}
