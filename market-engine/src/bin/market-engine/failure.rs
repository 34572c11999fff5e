//! A command's failure and the exit code it maps to.

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// 1 or 2.
    pub code: u8,
    /// What to tell the user.
    pub message: String,
}

impl Failure {
    /// Bad input: exit code 2.
    pub fn input(message: impl std::fmt::Display) -> Self {
        Failure {
            code: 2,
            message: message.to_string(),
        }
    }

    /// A runtime failure: exit code 1.
    pub fn runtime(message: impl std::fmt::Display) -> Self {
        Failure {
            code: 1,
            message: message.to_string(),
        }
    }
}
