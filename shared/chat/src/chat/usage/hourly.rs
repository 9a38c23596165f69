//! What the database keeps of usage: one row per API key, model and UTC hour.

use std::collections::HashMap;

use chrono::NaiveDate;

use super::UsageRecord;

/// The usage of one API key and model in one UTC hour: what the database keeps, so it
/// grows with keys, models and hours, never with requests.
#[derive(Debug, Clone, PartialEq)]
pub struct HourlyUsage {
    pub key: String,
    pub model: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    /// 0-23, UTC.
    pub hour: i16,
    pub requests: i64,
    pub cached_requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
}

/// Sums a batch of answers per key, model and hour, in primary-key order (key, day, hour,
/// model): two flushes upserting the same rows lock them in the same order, so they
/// cannot deadlock each other.
pub fn per_hour(batch: &[UsageRecord]) -> Vec<HourlyUsage> {
    use chrono::Timelike;
    let mut groups: Vec<HourlyUsage> = Vec::new();
    let mut index: HashMap<(&str, &str, NaiveDate, u32), usize> = HashMap::new();
    for r in batch {
        let (day, hour) = (r.at.date_naive(), r.at.hour());
        let i = *index
            .entry((r.key.as_str(), r.model.as_str(), day, hour))
            .or_insert_with(|| {
                groups.push(HourlyUsage {
                    key: r.key.clone(),
                    model: r.model.clone(),
                    day: day.to_string(),
                    hour: hour as i16,
                    requests: 0,
                    cached_requests: 0,
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    cost_usd: 0.0,
                });
                groups.len() - 1
            });
        let group = &mut groups[i];
        group.requests += 1;
        group.cached_requests += i64::from(r.cached);
        group.prompt_tokens += r.prompt_tokens as i64;
        group.completion_tokens += r.completion_tokens as i64;
        group.cost_usd += r.cost_usd;
    }
    groups.sort_by(|a, b| {
        (&a.key, &a.day, a.hour, &a.model).cmp(&(&b.key, &b.day, b.hour, &b.model))
    });
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_summed_per_key_model_and_hour() {
        let at = |h: u32, m: u32| {
            chrono::NaiveDate::from_ymd_opt(2026, 12, 5)
                .unwrap()
                .and_hms_opt(h, m, 0)
                .unwrap()
                .and_utc()
        };
        let record = |key: &str, model: &str, at, cached, cost| UsageRecord {
            key: key.into(),
            model: model.into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            cached,
            cost_usd: cost,
            at,
        };
        let groups = per_hour(&[
            record("a", "m", at(10, 1), false, 0.5),
            record("b", "m", at(10, 2), false, 0.1),
            record("a", "m", at(10, 59), true, 0.0),
            record("a", "m", at(11, 0), false, 0.25),
            record("a", "other", at(10, 30), false, 1.0),
        ]);
        let summary: Vec<(&str, &str, i16, i64, i64, i64, f64)> = groups
            .iter()
            .map(|g| {
                (
                    g.key.as_str(),
                    g.model.as_str(),
                    g.hour,
                    g.requests,
                    g.cached_requests,
                    g.prompt_tokens,
                    g.cost_usd,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a", "m", 10, 2, 1, 20, 0.5),
                ("a", "other", 10, 1, 0, 10, 1.0),
                ("a", "m", 11, 1, 0, 10, 0.25),
                ("b", "m", 10, 1, 0, 10, 0.1),
            ]
        );
        assert!(groups.iter().all(|g| g.day == "2026-12-05"));
    }
}
