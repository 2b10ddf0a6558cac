//! The documented name of every wire enum value, and how a reader combines an enum field
//! with the deprecated string field beside it (`drover.proto`, "Enumerations").
//!
//! Until every peer sets the enum fields, a writer sets both the enum and its name here; a
//! reader calls [`read`]: the enum when set, else the string (an older peer), and a number
//! it does not know (a newer peer) as that peer's string. These tables are the one place
//! the names live on the wire side; each side's edge maps its domain enums to these.

use crate::v1;

/// A wire enum whose values have documented names: the strings of the field it replaces.
pub trait Named: Copy + Eq + TryFrom<i32> + Into<i32> + 'static {
    /// Every value except `*_UNSPECIFIED`, with its name.
    const NAMES: &'static [(Self, &'static str)];

    /// The documented name; empty for `*_UNSPECIFIED`.
    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(v, _)| *v == self)
            .map_or("", |(_, n)| n)
    }

    /// The value named `name`; `None` for an unknown or empty name.
    fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(v, _)| *v)
    }
}

/// What a peer said in an enum field and the string field beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read<E> {
    /// Neither is set: the enum is unspecified and the string empty.
    Unset,
    /// A value this build knows.
    Known(E),
    /// A value this build does not know (a newer peer): its name as the peer wrote it, or
    /// the number in decimal when the peer wrote no name.
    Unknown(String),
}

impl<E: Named> Read<E> {
    /// The name to show: the documented one, the peer's for an unknown value, empty when
    /// unset.
    pub fn name(&self) -> &str {
        match self {
            Read::Unset => "",
            Read::Known(e) => e.name(),
            Read::Unknown(s) => s,
        }
    }
}

/// Reads the enum field `value` with its deprecated string field `name`: the enum when it
/// is a known value; the string when the enum is unspecified (an older peer) or a number
/// this build does not know (a newer peer, which still writes the string).
pub fn read<E: Named>(value: i32, name: &str) -> Read<E> {
    if value != 0
        && let Ok(e) = E::try_from(value)
    {
        return Read::Known(e);
    }
    if name.is_empty() {
        return if value == 0 {
            Read::Unset
        } else {
            Read::Unknown(value.to_string())
        };
    }
    E::from_name(name).map_or_else(|| Read::Unknown(name.to_string()), Read::Known)
}

/// The documented name of an enum field read as [`read`] does (for display).
pub fn name_of<E: Named>(value: i32, name: &str) -> String {
    read::<E>(value, name).name().to_string()
}

macro_rules! names {
    ($ty:ty { $($value:ident => $name:literal,)* }) => {
        impl Named for $ty {
            const NAMES: &'static [(Self, &'static str)] = &[$((<$ty>::$value, $name),)*];
        }
    };
}

names!(v1::UnitState {
    Starting => "starting",
    Running => "running",
    Degraded => "degraded",
    Backoff => "backoff",
    WaitingForDocker => "waiting-for-docker",
    Draining => "draining",
    Stopped => "stopped",
});

names!(v1::RunnerEventKind {
    Started => "started",
    Stopped => "stopped",
    Backoff => "backoff",
    WaitingForDocker => "waiting-for-docker",
    Draining => "draining",
    TokenInvalid => "token-invalid",
    VerifyFailed => "verify-failed",
    IpsChanged => "ips-changed",
});

names!(v1::JobState {
    Running => "running",
    Success => "success",
    Failed => "failed",
    Canceled => "canceled",
});

names!(v1::RolloutStrategyKind {
    Rolling => "rolling",
    All => "all",
});

names!(v1::RolloutState {
    Progressing => "progressing",
    Complete => "complete",
    Halted => "halted",
    None => "none",
});

names!(v1::AgentRolloutState {
    Waiting => "waiting",
    Pushed => "pushed",
    Applied => "applied",
    Refused => "refused",
    Offline => "offline",
    Failed => "failed",
});

names!(v1::UpgradeStep {
    Pending => "pending",
    Draining => "draining",
    Downloading => "downloading",
    Switching => "switching",
    Healthy => "healthy",
    RolledBack => "rolled-back",
    Refused => "refused",
    TimedOut => "timed-out",
});

names!(v1::AgentState {
    Healthy => "healthy",
    Degraded => "degraded",
    Lost => "lost",
    Revoked => "revoked",
});

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value of `E` except 0 has a distinct, non-empty name that reads back, and no
    /// number of `E` is left without one.
    fn complete<E: Named + std::fmt::Debug>() {
        let mut seen = std::collections::BTreeSet::new();
        for (v, n) in E::NAMES {
            assert!(!n.is_empty() && seen.insert(*n), "{v:?} {n:?}");
            assert_ne!((*v).into(), 0, "{v:?}");
            assert_eq!(v.name(), *n);
            assert_eq!(E::from_name(n), Some(*v));
            assert_eq!(read::<E>((*v).into(), ""), Read::Known(*v));
            assert_eq!(read::<E>(0, n), Read::Known(*v), "an older peer's {n}");
        }
        let numbers = (1..64).filter(|i| E::try_from(*i).is_ok()).count();
        assert_eq!(numbers, E::NAMES.len(), "a value without a name");
    }

    #[test]
    fn every_value_has_one_name_that_reads_back() {
        complete::<v1::UnitState>();
        complete::<v1::RunnerEventKind>();
        complete::<v1::JobState>();
        complete::<v1::RolloutStrategyKind>();
        complete::<v1::RolloutState>();
        complete::<v1::AgentRolloutState>();
        complete::<v1::AgentState>();
        complete::<v1::UpgradeStep>();
    }

    #[test]
    fn the_enum_wins_and_the_string_is_read_when_it_is_unset() {
        assert_eq!(
            read::<v1::UnitState>(v1::UnitState::Running.into(), "stopped"),
            Read::Known(v1::UnitState::Running)
        );
        assert_eq!(read::<v1::UnitState>(0, ""), Read::Unset);
        assert_eq!(
            read::<v1::UnitState>(0, "hibernating"),
            Read::Unknown("hibernating".into())
        );
    }

    #[test]
    fn an_unknown_number_reads_as_the_newer_peers_string() {
        assert_eq!(
            read::<v1::UnitState>(99, "hibernating"),
            Read::Unknown("hibernating".into())
        );
        assert_eq!(read::<v1::UnitState>(99, ""), Read::Unknown("99".into()));
        assert_eq!(name_of::<v1::AgentState>(-3, ""), "-3");
        assert_eq!(name_of::<v1::AgentState>(0, ""), "");
    }
}
