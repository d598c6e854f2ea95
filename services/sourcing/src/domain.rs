//! The sourcing planner, without I/O. Rule: ship the order from as few nodes as possible — one node
//! that can ship everything if any (the nearest such node; ties by higher priority, then id), else a
//! greedy cover: repeatedly the node that ships the most still-open units (ties by distance,
//! priority, id), up to the split limit (1 when splitting is not allowed). What no chosen node can
//! ship is backordered when the order allows it, otherwise the order fails with the shortfall
//! stated. Every candidate node gets an explanation.
use std::collections::BTreeMap;

/// A node that has ATP for some of the order's SKUs.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub location_id: String,
    pub distance_km: Option<f64>,
    pub priority: i32,
    /// ATP per SKU (clamped at 0).
    pub atp: BTreeMap<String, i64>,
}

/// One node's part of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedShipment {
    pub location_id: String,
    pub distance_km: Option<f64>,
    /// Units per SKU.
    pub lines: Vec<(String, i64)>,
}

/// Why a node won or was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub location_id: String,
    pub verdict: &'static str,
    pub reason: String,
}

/// A plan for one order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub shipments: Vec<PlannedShipment>,
    pub backordered: Vec<(String, i64)>,
    pub explanations: Vec<Explanation>,
}

/// Why an order cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// Short units per SKU (no backorder allowed).
    Insufficient(Vec<(String, i64)>),
    /// SKUs no eligible node carries at all (nothing to backorder against).
    NotCarried(Vec<String>),
}

/// Great-circle distance in km (haversine, mean earth radius).
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6371.0088 * h.sqrt().asin()
}

/// Orders candidates by distance (unknown last), then higher priority, then id.
fn closer(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    let distance = |c: &Candidate| c.distance_km.unwrap_or(f64::INFINITY);
    distance(a).total_cmp(&distance(b)).then(b.priority.cmp(&a.priority)).then(a.location_id.cmp(&b.location_id))
}

fn describe_distance(d: Option<f64>) -> String {
    d.map_or_else(|| "distance unknown".to_owned(), |d| format!("{d:.1} km"))
}

/// Plans `demand` (units per SKU, in order) over `candidates`. `carried` lists SKUs some eligible
/// node stocks (even at 0 ATP), which may be backordered.
///
/// # Errors
/// [`PlanError`] when the order cannot be met and its options do not allow the alternative.
pub fn plan(
    demand: &[(String, i64)],
    candidates: &[Candidate],
    carried: &[String],
    max_nodes: usize,
    allow_backorder: bool,
) -> Result<Plan, PlanError> {
    let mut open: BTreeMap<String, i64> = demand.iter().cloned().collect();
    let mut remaining: Vec<&Candidate> = candidates.iter().collect();
    remaining.sort_by(|a, b| closer(a, b));
    let mut shipments = Vec::new();
    let mut explanations = Vec::new();
    let covers = |c: &Candidate, open: &BTreeMap<String, i64>| -> i64 {
        open.iter().map(|(sku, units)| (*units).min(c.atp.get(sku).copied().unwrap_or(0))).sum()
    };
    while shipments.len() < max_nodes && open.values().any(|u| *u > 0) {
        let best = remaining
            .iter()
            .enumerate()
            .map(|(i, c)| (i, covers(c, &open)))
            .filter(|(_, units)| *units > 0)
            // max by units, then the earlier (closer) candidate
            .max_by(|(i, a), (j, b)| a.cmp(b).then(j.cmp(i)));
        let Some((index, _)) = best else { break };
        let node = remaining.remove(index);
        let open_total: i64 = open.values().sum();
        let mut lines = Vec::new();
        for (sku, units) in open.iter_mut() {
            let take = (*units).min(node.atp.get(sku).copied().unwrap_or(0));
            if take > 0 {
                lines.push((sku.clone(), take));
                *units -= take;
            }
        }
        let shipped: i64 = lines.iter().map(|(_, u)| u).sum();
        let reason = if shipped == open_total && shipments.is_empty() {
            format!("ships the whole order; nearest such node ({})", describe_distance(node.distance_km))
        } else {
            format!(
                "ships {shipped} of {open_total} open units, the most of any node ({})",
                describe_distance(node.distance_km)
            )
        };
        explanations.push(Explanation { location_id: node.location_id.clone(), verdict: "chosen", reason });
        shipments.push(PlannedShipment { location_id: node.location_id.clone(), distance_km: node.distance_km, lines });
    }
    for node in remaining {
        let could_ship = covers(node, &demand.iter().cloned().collect());
        let (verdict, reason) = if could_ship == 0 {
            ("excluded", "has no ATP for the order's SKUs".to_owned())
        } else if open.values().all(|u| *u == 0) {
            (
                "not needed",
                format!(
                    "could ship {could_ship} units, but the chosen nodes cover the order with fewer shipments or shorter distance ({})",
                    describe_distance(node.distance_km)
                ),
            )
        } else {
            (
                "excluded",
                format!("split limit of {max_nodes} node(s) reached ({})", describe_distance(node.distance_km)),
            )
        };
        explanations.push(Explanation { location_id: node.location_id.clone(), verdict, reason });
    }
    let short: Vec<(String, i64)> =
        demand.iter().filter_map(|(sku, _)| open.get(sku).filter(|u| **u > 0).map(|u| (sku.clone(), *u))).collect();
    if short.is_empty() {
        return Ok(Plan { shipments, backordered: Vec::new(), explanations });
    }
    let not_carried: Vec<String> =
        short.iter().filter(|(sku, _)| !carried.contains(sku)).map(|(sku, _)| sku.clone()).collect();
    if !not_carried.is_empty() {
        return Err(PlanError::NotCarried(not_carried));
    }
    if !allow_backorder {
        return Err(PlanError::Insufficient(short));
    }
    Ok(Plan { shipments, backordered: short, explanations })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, distance: f64, priority: i32, atp: &[(&str, i64)]) -> Candidate {
        Candidate {
            location_id: id.into(),
            distance_km: Some(distance),
            priority,
            atp: atp.iter().map(|(s, u)| ((*s).to_owned(), *u)).collect(),
        }
    }

    fn demand(lines: &[(&str, i64)]) -> Vec<(String, i64)> {
        lines.iter().map(|(s, u)| ((*s).to_owned(), *u)).collect()
    }

    fn carried(skus: &[&str]) -> Vec<String> {
        skus.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn prefers_the_nearest_node_that_ships_everything() {
        let nodes = [
            node("FAR", 900.0, 0, &[("A", 5), ("B", 5)]),
            node("NEAR", 10.0, 0, &[("A", 5), ("B", 5)]),
            node("PART", 1.0, 0, &[("A", 5)]),
        ];
        let result = plan(&demand(&[("A", 2), ("B", 1)]), &nodes, &carried(&["A", "B"]), 3, false).unwrap();
        assert_eq!(result.shipments.len(), 1);
        assert_eq!(result.shipments[0].location_id, "NEAR");
        assert_eq!(result.shipments[0].lines, vec![("A".to_owned(), 2), ("B".to_owned(), 1)]);
        assert_eq!(result.explanations[0].verdict, "chosen");
    }

    #[test]
    fn splits_over_the_fewest_nodes_b31() {
        // B31 step 1: L1 has 4 free (10 on hand, 6 committed), L2 has 15; A×13 → L1:4 + L2:9 is
        // two nodes either way; the greedy cover takes L2 (covers most) first.
        let nodes = [node("L1", 1.0, 2, &[("A", 4)]), node("L2", 2.0, 1, &[("A", 15)])];
        let result = plan(&demand(&[("A", 13)]), &nodes, &carried(&["A"]), 3, false).unwrap();
        assert_eq!(result.shipments.len(), 1);
        assert_eq!(result.shipments[0].location_id, "L2");
        assert_eq!(result.shipments[0].lines, vec![("A".to_owned(), 13)]);
        // With L2 holding only 9, both are needed: L2:9 and L1:4.
        let nodes = [node("L1", 1.0, 2, &[("A", 4)]), node("L2", 2.0, 1, &[("A", 9)])];
        let result = plan(&demand(&[("A", 13)]), &nodes, &carried(&["A"]), 3, false).unwrap();
        let mut parts: Vec<(String, i64)> =
            result.shipments.iter().map(|s| (s.location_id.clone(), s.lines[0].1)).collect();
        parts.sort();
        assert_eq!(parts, vec![("L1".to_owned(), 4), ("L2".to_owned(), 9)]);
    }

    #[test]
    fn without_split_a_short_order_fails_or_is_backordered_b31() {
        let nodes = [node("L1", 1.0, 0, &[("A", 1)]), node("L2", 2.0, 0, &[("A", 1)])];
        let split = plan(&demand(&[("A", 2)]), &nodes, &carried(&["A"]), 3, false).unwrap();
        assert_eq!(split.shipments.len(), 2);
        assert_eq!(
            plan(&demand(&[("A", 2)]), &nodes, &carried(&["A"]), 1, false),
            Err(PlanError::Insufficient(vec![("A".to_owned(), 1)]))
        );
        let backordered = plan(&demand(&[("A", 2)]), &nodes, &carried(&["A"]), 1, true).unwrap();
        assert_eq!(backordered.shipments[0].lines, vec![("A".to_owned(), 1)]);
        assert_eq!(backordered.backordered, vec![("A".to_owned(), 1)]);
    }

    #[test]
    fn two_skus_at_two_nodes_make_two_shipments_b31() {
        let nodes = [node("L1", 1.0, 0, &[("A", 1)]), node("L2", 2.0, 0, &[("B", 1)])];
        let result = plan(&demand(&[("A", 1), ("B", 1)]), &nodes, &carried(&["A", "B"]), 3, false).unwrap();
        assert_eq!(result.shipments.len(), 2);
    }

    #[test]
    fn uncarried_skus_fail_even_with_backorder() {
        assert_eq!(plan(&demand(&[("Z", 1)]), &[], &[], 3, true), Err(PlanError::NotCarried(vec!["Z".to_owned()])));
        let result = plan(&demand(&[("A", 3)]), &[], &carried(&["A"]), 3, true).unwrap();
        assert!(result.shipments.is_empty());
        assert_eq!(result.backordered, vec![("A".to_owned(), 3)]);
    }

    #[test]
    fn distance_is_haversine() {
        // São Paulo → Rio de Janeiro ≈ 361 km.
        let d = distance_km((-23.5505, -46.6333), (-22.9068, -43.1729));
        assert!((d - 361.0).abs() < 5.0, "{d}");
    }
}
