//! Minimum release age: versions published more recently than `MIN_RELEASE_AGE` (by the
//! packument's `time`) are hidden, except for the packages `MIN_RELEASE_AGE_EXCLUDE` names.

use std::time::Duration;

use super::names::NameSet;

#[derive(Debug)]
pub struct AgeGate {
    min_age_ms: u64,
    min_age: Duration,
    exempt: NameSet,
}

impl AgeGate {
    /// `exclude` holds names, or patterns written as `/regex/`.
    pub fn new(min_age: Duration, exclude: &[String]) -> anyhow::Result<AgeGate> {
        let exempt = NameSet::parse(exclude, "MIN_RELEASE_AGE_EXCLUDE")?;
        Ok(AgeGate {
            min_age_ms: min_age.as_millis() as u64,
            min_age,
            exempt,
        })
    }

    pub(crate) fn min_age(&self) -> Duration {
        self.min_age
    }

    pub(crate) fn exempt(&self, name: &str) -> bool {
        self.exempt.contains(name)
    }

    /// When a version published at `published_ms` may be shown: `None` if it already may.
    pub(crate) fn hidden_until(&self, published_ms: u64, now_ms: u64) -> Option<u64> {
        let visible_at = published_ms.saturating_add(self.min_age_ms);
        (visible_at > now_ms).then_some(visible_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    #[test]
    fn hides_young_versions_with_a_fixed_clock() {
        let gate = AgeGate::new(Duration::from_secs(72 * 3600), &[]).unwrap();
        let now = 1_000 * HOUR;
        assert_eq!(gate.hidden_until(now - 71 * HOUR, now), Some(now + HOUR));
        assert_eq!(gate.hidden_until(now - 72 * HOUR, now), None);
        assert_eq!(gate.hidden_until(now - 500 * HOUR, now), None);
        assert_eq!(
            gate.hidden_until(now + HOUR, now),
            Some(now + 73 * HOUR),
            "future dates stay hidden"
        );
    }

    #[test]
    fn exemptions() {
        let gate = AgeGate::new(
            Duration::from_secs(1),
            &["react".into(), "/^@myorg\\//".into(), " ".into()],
        )
        .unwrap();
        assert!(gate.exempt("react"));
        assert!(gate.exempt("@myorg/tool"));
        assert!(!gate.exempt("react-dom"));
        assert!(AgeGate::new(Duration::from_secs(1), &["/(/".into()]).is_err());
    }
}
