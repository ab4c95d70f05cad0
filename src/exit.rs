//! The process exit statuses of the command line, in one place (README "Commands and exit codes").

/// How a command ended, as the exit code that scripts and systemd read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Success, including "nothing to do".
    Success,
    /// The run failed: the directory read, a sink, or the state file.
    Failed,
    /// Usage or configuration error.
    Usage,
    /// Held by a safety threshold (also a dry run whose plan would be held).
    Held,
    /// Some sinks succeeded and some failed.
    Partial,
    /// A one-shot run stopped by this signal (SIGINT → 130, SIGTERM → 143).
    Interrupted(i32),
}

impl ExitStatus {
    /// The numeric exit code.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failed => 1,
            ExitStatus::Usage => 2,
            ExitStatus::Held => 3,
            ExitStatus::Partial => 4,
            ExitStatus::Interrupted(signal) => 128 + signal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ExitStatus;

    #[test]
    fn codes_are_the_documented_ones() {
        let all = [
            ExitStatus::Success,
            ExitStatus::Failed,
            ExitStatus::Usage,
            ExitStatus::Held,
            ExitStatus::Partial,
        ];
        assert_eq!(all.map(ExitStatus::code), [0, 1, 2, 3, 4]);
        assert_eq!(ExitStatus::Interrupted(2).code(), 130);
        assert_eq!(ExitStatus::Interrupted(15).code(), 143);
    }
}
