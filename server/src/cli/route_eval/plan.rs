//! Which models `--calibrate ROUTE` runs, and joining their records into the calibration.

use std::collections::HashMap;

use super::calibrate::{self, CalibrateError, Calibration};
use super::{ModelReport, RouteEvalArgs};

/// The three models `--calibrate` compares.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CalibratePlan {
    pub route: String,
    pub cheap: String,
    pub fallback: String,
}

impl CalibratePlan {
    /// Cheap = the route's first tier, fallback = its last (as `/models` lists them), each
    /// overridable by flag.
    pub fn resolve(
        args: &RouteEvalArgs,
        tiers: &HashMap<String, Vec<String>>,
    ) -> Result<Option<Self>, CalibrateError> {
        let Some(route) = &args.calibrate else {
            return Ok(None);
        };
        let listed = tiers.get(route).map(Vec::as_slice).unwrap_or_default();
        let (Some(cheap), Some(fallback)) = (
            args.cheap.as_ref().or(listed.first()),
            args.fallback.as_ref().or(listed.last()),
        ) else {
            return Err(CalibrateError::NoTiers { route: route.clone() });
        };
        if cheap == fallback {
            return Err(CalibrateError::SameModel {
                route: route.clone(),
                model: cheap.clone(),
            });
        }
        Ok(Some(Self {
            route: route.clone(),
            cheap: cheap.clone(),
            fallback: fallback.clone(),
        }))
    }

    /// `--model` as given, then the plan's models it lacks (cheap, fallback, route).
    pub fn models(plan: Option<&Self>, given: &[String]) -> Vec<String> {
        let mut models = given.to_vec();
        for m in plan.iter().flat_map(|p| [&p.cheap, &p.fallback, &p.route]) {
            if !models.contains(m) {
                models.push(m.clone());
            }
        }
        models
    }

    pub fn calibrate(
        &self,
        models: &[ModelReport],
        target: Option<f64>,
    ) -> Result<Calibration, CalibrateError> {
        let records = |name: &str| {
            models
                .iter()
                .find(|m| m.model == name)
                .map(|m| m.records.as_slice())
                .ok_or_else(|| CalibrateError::Missing { model: name.into() })
        };
        let (cheap, fallback, route) = (
            records(&self.cheap)?,
            records(&self.fallback)?,
            records(&self.route)?,
        );
        for (name, r) in [(&self.cheap, cheap), (&self.fallback, fallback)] {
            if r.len() != route.len() {
                return Err(CalibrateError::Missing { model: name.clone() });
            }
        }
        let (items, mismatches) = calibrate::items_from(cheap, fallback, route, &self.cheap);
        calibrate::calibrate(
            [&self.route, &self.cheap, &self.fallback],
            &items,
            mismatches,
            target,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::route_eval::ItemRecord;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RouteEvalArgs,
    }

    fn args(extra: &[&str]) -> Result<RouteEvalArgs, clap::Error> {
        let base = ["wick", "--data", "d.jsonl"];
        Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.args)
    }

    fn tiers() -> HashMap<String, Vec<String>> {
        [(
            "auto".to_string(),
            vec!["small".into(), "mid".into(), "large".into()],
        )]
        .into()
    }

    fn plan(route: &str, cheap: &str, fallback: &str) -> CalibratePlan {
        CalibratePlan {
            route: route.into(),
            cheap: cheap.into(),
            fallback: fallback.into(),
        }
    }

    #[test]
    fn flags_parse_and_check() {
        let a = args(&["--calibrate", "auto", "--target-accuracy", "0.8"]).expect("no --model needed");
        assert_eq!(
            (a.calibrate.as_deref(), a.target_accuracy),
            (Some("auto"), Some(0.8))
        );
        assert!(args(&[]).is_err(), "--model or --calibrate");
        assert!(
            args(&["--model", "m", "--target-accuracy", "0.8"]).is_err(),
            "needs --calibrate"
        );
        assert!(
            args(&["--model", "m", "--cheap", "s"]).is_err(),
            "needs --calibrate"
        );
        for bad in ["1.5", "-0.1", "x"] {
            assert!(
                args(&["--calibrate", "auto", "--target-accuracy", bad]).is_err(),
                "{bad}"
            );
        }
        // --fallback alone only names the fallback for the columns.
        let a = args(&["--model", "m", "--fallback", "large"]).expect("parses");
        assert_eq!(CalibratePlan::resolve(&a, &tiers()), Ok(None));
    }

    #[test]
    fn the_plan_takes_the_route_tiers_unless_overridden() {
        let a = args(&["--calibrate", "auto"]).expect("parses");
        let p = CalibratePlan::resolve(&a, &tiers())
            .expect("tiers")
            .expect("plan");
        assert_eq!(p, plan("auto", "small", "large"));
        let a = args(&["--calibrate", "auto", "--fallback", "mid"]).expect("parses");
        let p = CalibratePlan::resolve(&a, &tiers())
            .expect("tiers")
            .expect("plan");
        assert_eq!(p, plan("auto", "small", "mid"));
        // An unlisted route needs both names.
        let a = args(&["--calibrate", "other", "--fallback", "large"]).expect("parses");
        let err = CalibratePlan::resolve(&a, &tiers()).expect_err("no cheap");
        assert!(err.to_string().contains("lists no tiers"), "{err}");
        let a = args(&["--calibrate", "other", "--fallback", "large", "--cheap", "small"]).expect("parses");
        let p = CalibratePlan::resolve(&a, &tiers())
            .expect("named")
            .expect("plan");
        assert_eq!(p, plan("other", "small", "large"));
        let a = args(&["--calibrate", "auto", "--fallback", "small"]).expect("parses");
        assert!(matches!(
            CalibratePlan::resolve(&a, &tiers()),
            Err(CalibrateError::SameModel { .. })
        ));
    }

    #[test]
    fn missing_models_are_added_once() {
        let p = plan("auto", "small", "large");
        let given = vec!["large".to_string(), "xl".to_string()];
        assert_eq!(
            CalibratePlan::models(Some(&p), &given),
            ["large", "xl", "small", "auto"]
        );
        assert_eq!(CalibratePlan::models(None, &given), given);
    }

    #[test]
    fn calibrating_needs_every_model_over_every_item() {
        let report = |name: &str, n: usize| {
            let records = vec![ItemRecord::default(); n];
            ModelReport::new(name, vec![], records, &Default::default(), None)
        };
        let p = plan("auto", "small", "large");
        let models = [report("small", 2), report("large", 2)];
        assert_eq!(
            p.calibrate(&models, None),
            Err(CalibrateError::Missing { model: "auto".into() })
        );
        let models = [report("small", 2), report("large", 1), report("auto", 2)];
        assert_eq!(
            p.calibrate(&models, None),
            Err(CalibrateError::Missing {
                model: "large".into()
            })
        );
        // All there, nothing scored.
        let models = [report("small", 2), report("large", 2), report("auto", 2)];
        assert_eq!(
            p.calibrate(&models, None),
            Err(CalibrateError::NoScores { route: "auto".into() })
        );
    }
}
