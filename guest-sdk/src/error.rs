//! The error type orchestrations return and propagate with `?`.

use std::fmt;

/// An orchestration failure: a message that ends up in the instance's status.
///
/// Any `std::error::Error` converts into it, so `?` works on serde and I/O
/// errors alike.
///
/// ```
/// fn parse(input: &str) -> duro_sdk::Result<u32> {
///     Ok(input.parse::<u32>()?)
/// }
/// assert!(parse("x").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

/// `Result` with [`Error`] as its error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with this message.
    ///
    /// ```
    /// let e = duro_sdk::Error::msg("no such order");
    /// assert_eq!(e.to_string(), "no such order");
    /// ```
    pub fn msg(message: impl fmt::Display) -> Self {
        Error {
            message: message.to_string(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(e: E) -> Self {
        Error::msg(e)
    }
}
