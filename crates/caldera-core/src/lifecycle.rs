//! The experiment lifecycle.
//!
//! ```text
//!            start           pause
//!  queued ─────────▶ running ◀────▶ paused
//!    │                │  resume      │
//!    │ abort          │ complete     │ complete / abort
//!    ▼                ▼              ▼
//!  aborted         completed      completed / aborted      (running ──abort──▶ aborted)
//! ```
//!
//! Every other (status, action) pair is a [`TransitionError`] such as
//! `cannot pause an experiment that is queued`. `completed` and `aborted` are terminal; only a
//! `queued` experiment may be edited.

#![warn(missing_docs)]

use crate::serde_util::string_enum;

string_enum! {
    /// Where an experiment is in its lifecycle.
    pub enum ExperimentStatus / ParseStatusError ("experiment status") {
        /// Created, not started; may still be edited.
        Queued => "queued",
        /// Jobs are being handed to workers.
        Running => "running",
        /// No new jobs are handed out; jobs in flight finish.
        Paused => "paused",
        /// Every job has a result (terminal).
        Completed => "completed",
        /// Stopped for good by an operator (terminal).
        Aborted => "aborted",
    }
}

string_enum! {
    /// What an operator (or the scheduler, for `complete`) does to an experiment.
    pub enum ExperimentAction / ParseActionError ("experiment action") {
        /// queued → running.
        Start => "start",
        /// running → paused.
        Pause => "pause",
        /// paused → running.
        Resume => "resume",
        /// queued, running or paused → aborted.
        Abort => "abort",
        /// running or paused → completed.
        Complete => "complete",
    }
}

/// An action that the experiment's status does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} an experiment that is {from}")]
pub struct TransitionError {
    /// The status the experiment was in.
    pub from: ExperimentStatus,
    /// The action that was refused.
    pub action: ExperimentAction,
}

impl ExperimentStatus {
    /// `completed` and `aborted`: no action applies any more.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            ExperimentStatus::Completed | ExperimentStatus::Aborted
        )
    }

    /// Only a `queued` experiment may have its spec edited.
    pub const fn is_editable(self) -> bool {
        matches!(self, ExperimentStatus::Queued)
    }

    /// Same as [`transition`]`(self, action)`.
    pub fn apply(self, action: ExperimentAction) -> Result<ExperimentStatus, TransitionError> {
        transition(self, action)
    }
}

/// The status after `action`, or why `action` is not allowed in `status`.
pub fn transition(
    status: ExperimentStatus,
    action: ExperimentAction,
) -> Result<ExperimentStatus, TransitionError> {
    use ExperimentAction as A;
    use ExperimentStatus as S;
    match (status, action) {
        (S::Queued, A::Start) => Ok(S::Running),
        (S::Running, A::Pause) => Ok(S::Paused),
        (S::Paused, A::Resume) => Ok(S::Running),
        (S::Running | S::Paused, A::Complete) => Ok(S::Completed),
        (S::Queued | S::Running | S::Paused, A::Abort) => Ok(S::Aborted),
        (from, action) => Err(TransitionError { from, action }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExperimentAction as A;
    use ExperimentStatus as S;

    /// Every (status, action) pair, with the expected result written out.
    #[test]
    fn transition_table() {
        let table: &[(S, A, Option<S>)] = &[
            (S::Queued, A::Start, Some(S::Running)),
            (S::Queued, A::Pause, None),
            (S::Queued, A::Resume, None),
            (S::Queued, A::Abort, Some(S::Aborted)),
            (S::Queued, A::Complete, None),
            (S::Running, A::Start, None),
            (S::Running, A::Pause, Some(S::Paused)),
            (S::Running, A::Resume, None),
            (S::Running, A::Abort, Some(S::Aborted)),
            (S::Running, A::Complete, Some(S::Completed)),
            (S::Paused, A::Start, None),
            (S::Paused, A::Pause, None),
            (S::Paused, A::Resume, Some(S::Running)),
            (S::Paused, A::Abort, Some(S::Aborted)),
            (S::Paused, A::Complete, Some(S::Completed)),
            (S::Completed, A::Start, None),
            (S::Completed, A::Pause, None),
            (S::Completed, A::Resume, None),
            (S::Completed, A::Abort, None),
            (S::Completed, A::Complete, None),
            (S::Aborted, A::Start, None),
            (S::Aborted, A::Pause, None),
            (S::Aborted, A::Resume, None),
            (S::Aborted, A::Abort, None),
            (S::Aborted, A::Complete, None),
        ];
        assert_eq!(table.len(), S::ALL.len() * A::ALL.len());
        for s in S::ALL {
            for a in A::ALL {
                assert!(
                    table.iter().any(|(ts, ta, _)| ts == s && ta == a),
                    "{s} {a}"
                );
            }
        }
        for &(status, action, expected) in table {
            let got = transition(status, action);
            match expected {
                Some(to) => assert_eq!(got, Ok(to), "{status} --{action}-->"),
                None => assert_eq!(
                    got,
                    Err(TransitionError {
                        from: status,
                        action
                    })
                ),
            }
            assert_eq!(status.apply(action), got);
        }
    }

    #[test]
    fn error_messages() {
        let cases = [
            (
                S::Queued,
                A::Pause,
                "cannot pause an experiment that is queued",
            ),
            (
                S::Completed,
                A::Start,
                "cannot start an experiment that is completed",
            ),
            (
                S::Aborted,
                A::Abort,
                "cannot abort an experiment that is aborted",
            ),
            (
                S::Running,
                A::Resume,
                "cannot resume an experiment that is running",
            ),
            (
                S::Queued,
                A::Complete,
                "cannot complete an experiment that is queued",
            ),
        ];
        for (s, a, msg) in cases {
            assert_eq!(transition(s, a).unwrap_err().to_string(), msg);
        }
    }

    #[test]
    fn predicates() {
        let expect = [
            (S::Queued, false, true),
            (S::Running, false, false),
            (S::Paused, false, false),
            (S::Completed, true, false),
            (S::Aborted, true, false),
        ];
        assert_eq!(expect.len(), S::ALL.len());
        for (s, terminal, editable) in expect {
            assert_eq!(s.is_terminal(), terminal, "{s}");
            assert_eq!(s.is_editable(), editable, "{s}");
            // A terminal status accepts no action at all.
            if terminal {
                assert!(A::ALL.iter().all(|a| transition(s, *a).is_err()));
            }
        }
    }

    #[test]
    fn strings() {
        let statuses = [
            ("queued", S::Queued),
            ("running", S::Running),
            ("paused", S::Paused),
            ("completed", S::Completed),
            ("aborted", S::Aborted),
        ];
        for (text, s) in statuses {
            assert_eq!(s.as_str(), text);
            assert_eq!(text.parse::<S>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{text}\""));
            assert_eq!(
                serde_json::from_str::<S>(&format!("\"{text}\"")).unwrap(),
                s
            );
        }
        for a in A::ALL {
            assert_eq!(a.to_string().parse::<A>().unwrap(), *a);
        }
        assert_eq!(
            "Queued".parse::<S>().unwrap_err().to_string(),
            r#"unknown experiment status "Queued" (expected queued, running, paused, completed or aborted)"#
        );
        assert_eq!(
            serde_json::from_str::<A>("\"stop\"")
                .unwrap_err()
                .to_string(),
            r#"unknown experiment action "stop" (expected start, pause, resume, abort or complete) at line 1 column 6"#
        );
    }
}
