//! The balancer: from the live nodes and every lease, what this node should do now to reach its
//! fair share, `ceil(active leases / live nodes)`, without churn. Pure; the lease store reads the
//! inputs and applies the plan.
//!
//! Rules, each there to keep a cluster calm:
//! - Claim free leases (no owner, not reserved for another node by a hand-off request, parents
//!   finished) up to the share.
//! - Take at most **one** expired lease per scan, and only while under the share: a node that
//!   comes back from a pause must not be stripped of everything at once, and a cluster whose
//!   clocks all see the same expiry does not stampede.
//! - Never take a live lease: ask for it (`request`), one request at a time, and only from a node
//!   holding at least two more than this one, so a 3/3/2 split stays put.
//! - Hand off a requested lease only when that helps: this node holds at least two more than the
//!   requester.
//!
//! Must not: touch the database or the clock.

use std::collections::{BTreeMap, BTreeSet};

/// One lease as a scan sees it; `expired` and `requested_by` are computed by the database
/// (`requested_by` is empty once the request is older than a lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    pub key: String,
    pub owner: Option<String>,
    pub expired: bool,
    pub requested_by: Option<String>,
    /// Its shard is read to the end and delivered (a closed, split or merged shard).
    pub finished: bool,
    /// A parent is not finished yet: children wait (split / merge order).
    pub blocked: bool,
}

/// What this node should do after one scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Free leases to claim.
    pub claim_free: Vec<String>,
    /// The one expired lease to take over, if any.
    pub take_expired: Option<String>,
    /// A live lease of a more loaded node to ask for.
    pub request: Option<String>,
    /// This node's leases to hand over to their requesters (after finishing their batches).
    pub hand_off: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.claim_free.is_empty() && self.take_expired.is_none() && self.request.is_none() && self.hand_off.is_empty()
    }
}

/// `ceil(active / live)`: every node's target; 0 with no active lease.
pub fn fair_share(active_leases: usize, live_nodes: usize) -> usize {
    active_leases.div_ceil(live_nodes.max(1))
}

/// The plan for `me`, given the live nodes (`me` counts as live) and every lease.
/// A stable number for a node id (FNV-1a), to spread nodes' choices.
fn spread(node: &str) -> usize {
    node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3))
        as usize
}

pub fn plan(me: &str, live_nodes: &[String], leases: &[LeaseState]) -> Plan {
    let mut live: BTreeSet<&str> = live_nodes.iter().map(String::as_str).collect();
    live.insert(me);
    let active: Vec<&LeaseState> = leases.iter().filter(|lease| !lease.finished).collect();
    let share = fair_share(active.len(), live.len());

    let mut held: BTreeMap<&str, usize> = live.iter().map(|node| (*node, 0)).collect();
    for lease in &active {
        if let Some(owner) = lease.owner.as_deref()
            && !lease.expired
            && let Some(count) = held.get_mut(owner)
        {
            *count += 1;
        }
    }
    let mine = held.get(me).copied().unwrap_or(0);
    let reserved_for_other = |lease: &LeaseState| lease.requested_by.as_deref().is_some_and(|by| by != me);
    let claimable = |lease: &&&LeaseState| !lease.blocked && !reserved_for_other(lease);

    let mut plan = Plan::default();
    let mut room = share.saturating_sub(mine);
    plan.claim_free = active
        .iter()
        .filter(|lease| lease.owner.is_none())
        .filter(claimable)
        .take(room)
        .map(|l| l.key.clone())
        .collect();
    room -= plan.claim_free.len();
    if room > 0 {
        // Nodes start at different places among the expired leases (by their id), so the
        // survivors of a dead node take different ones in the same scan instead of all reaching
        // for the first and all but one coming back empty.
        let expired: Vec<&&LeaseState> =
            active.iter().filter(|lease| lease.owner.is_some() && lease.expired).filter(claimable).collect();
        if !expired.is_empty() {
            let offset = spread(me) % expired.len();
            plan.take_expired = Some(expired[offset].key.clone());
        }
    }

    let gained = plan.claim_free.len() + usize::from(plan.take_expired.is_some());
    let asking_already = active.iter().any(|lease| lease.requested_by.as_deref() == Some(me));
    if gained == 0 && mine < share && !asking_already {
        let busiest = held
            .iter()
            .filter(|(node, _)| **node != me)
            .max_by_key(|(node, count)| (**count, std::cmp::Reverse(**node)));
        if let Some((busiest, count)) = busiest
            && *count >= mine + 2
        {
            plan.request = active
                .iter()
                .filter(|lease| lease.owner.as_deref() == Some(*busiest) && !lease.expired)
                .find(|lease| lease.requested_by.is_none())
                .map(|lease| lease.key.clone());
        }
    }

    let mut counts = held.clone();
    for lease in &active {
        let Some(requester) = lease.requested_by.as_deref() else { continue };
        if lease.owner.as_deref() != Some(me) || lease.expired || requester == me || !live.contains(requester) {
            continue;
        }
        let (mine_now, theirs) = (counts[me], counts[requester]);
        if mine_now >= theirs + 2 {
            plan.hand_off.push(lease.key.clone());
            *counts.entry(me).or_default() -= 1;
            *counts.entry(requester).or_default() += 1;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(key: &str, owner: Option<&str>) -> LeaseState {
        LeaseState {
            key: key.into(),
            owner: owner.map(Into::into),
            expired: false,
            requested_by: None,
            finished: false,
            blocked: false,
        }
    }

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    /// `owners[i]` owns lease `s<i>` ("" = free).
    fn leases(owners: &[&str]) -> Vec<LeaseState> {
        owners
            .iter()
            .enumerate()
            .map(|(index, owner)| lease(&format!("s{index}"), (!owner.is_empty()).then_some(*owner)))
            .collect()
    }

    #[test]
    fn fair_share_is_the_ceiling() {
        let table = [(0, 3, 0), (1, 3, 1), (8, 3, 3), (9, 3, 3), (10, 3, 4), (8, 1, 8), (5, 0, 5)];
        for (active, live, share) in table {
            assert_eq!(fair_share(active, live), share, "{active} leases over {live} nodes");
        }
    }

    #[test]
    fn claims_free_leases_up_to_the_share() {
        // (holder counts before, what "a" claims): 8 leases, 3 nodes, share 3.
        let table: [(&[&str], usize); 4] = [
            (&["", "", "", "", "", "", "", ""], 3),
            (&["a", "", "", "", "", "", "", ""], 2),
            (&["a", "a", "a", "", "", "", "", ""], 0),
            (&["b", "b", "b", "c", "c", "c", "", ""], 2),
        ];
        for (owners, claims) in table {
            let plan = plan("a", &nodes(&["a", "b", "c"]), &leases(owners));
            assert_eq!(plan.claim_free.len(), claims, "{owners:?}: {plan:?}");
            assert_eq!(plan.take_expired, None);
        }
    }

    #[test]
    fn takes_at_most_one_expired_lease_per_scan() {
        let mut all = leases(&["b", "b", "b", "b", "b", "b"]);
        for lease in &mut all {
            lease.expired = true;
        }
        let plan = plan("a", &nodes(&["a"]), &all);
        assert!(plan.take_expired.is_some(), "{plan:?}");
        assert!(plan.claim_free.is_empty() && plan.request.is_none(), "{plan:?}");
        // Two survivors reach for different expired leases in the same scan.
        let (x, y) = (super::plan("x", &nodes(&["x", "y"]), &all), super::plan("y", &nodes(&["x", "y"]), &all));
        assert_ne!(x.take_expired, y.take_expired, "{x:?} / {y:?}");
    }

    #[test]
    fn a_node_at_its_share_takes_nothing_expired() {
        let mut all = leases(&["a", "a", "b", "b"]);
        all[2].expired = true;
        let plan = plan("a", &nodes(&["a", "b"]), &all);
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn asks_the_busiest_node_only_when_it_holds_two_more() {
        // (owners, live nodes, the lease "a" asks for)
        let table: [(&[&str], &[&str], Option<&str>); 5] = [
            (&["b", "b", "b", "b"], &["a", "b"], Some("s0")),
            (&["b", "b", "b", "c", "c", "c", "a", "a"], &["a", "b", "c"], None),
            (&["b", "b", "c", "c"], &["a", "b", "c"], Some("s0")),
            (&["b", "b", "b", "c", "c", "a"], &["a", "b", "c"], Some("s0")),
            (&["b", "c", "c", "c", "c"], &["a", "b", "c"], Some("s1")),
        ];
        for (owners, live, request) in table {
            let plan = plan("a", &nodes(live), &leases(owners));
            assert_eq!(plan.request.as_deref(), request, "{owners:?}");
            assert!(plan.hand_off.is_empty());
        }
    }

    #[test]
    fn one_request_at_a_time() {
        let mut all = leases(&["b", "b", "b", "b", "b", "b"]);
        all[0].requested_by = Some("a".into());
        let plan = plan("a", &nodes(&["a", "b"]), &all);
        assert_eq!(plan.request, None);
    }

    #[test]
    fn hands_off_only_what_helps_and_only_to_live_requesters() {
        // (owners, requests on a's leases: (lease index, requester), hand-offs)
        /// (owners, requests on a's leases as (lease index, requester), expected hand-offs)
        type Case<'a> = (&'a [&'a str], &'a [(usize, &'a str)], &'a [&'a str]);
        let table: [Case; 4] = [
            (&["a", "a", "a", "a"], &[(0, "b")], &["s0"]),
            (&["a", "a", "b"], &[(0, "b")], &[]),
            (&["a", "a", "a", "a", "a", "a"], &[(0, "b"), (1, "b"), (2, "b"), (3, "b")], &["s0", "s1", "s2"]),
            (&["a", "a", "a", "a"], &[(0, "dead")], &[]),
        ];
        for (owners, requests, hand_off) in table {
            let mut all = leases(owners);
            for (index, requester) in requests {
                all[*index].requested_by = Some(requester.to_string());
            }
            let plan = plan("a", &nodes(&["a", "b"]), &all);
            assert_eq!(plan.hand_off, hand_off.iter().map(|key| key.to_string()).collect::<Vec<_>>(), "{requests:?}");
        }
    }

    #[test]
    fn reserved_blocked_and_finished_leases() {
        let mut all = leases(&["", "", "", ""]);
        all[0].requested_by = Some("b".into());
        all[1].blocked = true;
        all[2].finished = true;
        let plan = plan("a", &nodes(&["a", "b"]), &all);
        // 3 active leases, 2 nodes: share 2, but only s3 may be claimed.
        assert_eq!(plan.claim_free, ["s3"]);
        all[0].requested_by = Some("a".into());
        let plan = super::plan("a", &nodes(&["a", "b"]), &all);
        assert_eq!(plan.claim_free, ["s0", "s3"]);
    }

    /// Every start from 1-4 nodes and 0-9 leases, each lease free or held by a node: nodes
    /// apply their plans in turn (hand-offs at once) until nothing changes. The end is balanced
    /// (no live node holds two more than another, every lease owned) and reached in few rounds.
    #[test]
    fn every_small_cluster_converges_without_churn() {
        for node_count in 1..=4usize {
            let names: Vec<String> = (0..node_count).map(|index| format!("n{index}")).collect();
            for lease_count in 0..=9usize {
                // Starts: everything free, everything on n0, round-robin, all on the last node.
                let starts: Vec<Vec<Option<usize>>> = vec![
                    vec![None; lease_count],
                    vec![Some(0); lease_count],
                    (0..lease_count).map(|index| Some(index % node_count)).collect(),
                    vec![Some(node_count - 1); lease_count],
                ];
                for start in starts {
                    let mut state: Vec<LeaseState> = start
                        .iter()
                        .enumerate()
                        .map(|(index, owner)| lease(&format!("s{index}"), owner.map(|node| names[node].as_str())))
                        .collect();
                    let mut quiet_rounds = 0;
                    for round in 0.. {
                        assert!(round < 40, "{node_count} nodes, {lease_count} leases: no convergence: {state:?}");
                        let mut changed = false;
                        for me in &names {
                            let plan = plan(me, &names, &state);
                            changed |= !plan.is_empty();
                            apply(me, &plan, &mut state);
                        }
                        quiet_rounds = if changed { 0 } else { quiet_rounds + 1 };
                        if quiet_rounds == 2 {
                            break;
                        }
                    }
                    let counts: Vec<usize> = names
                        .iter()
                        .map(|name| state.iter().filter(|lease| lease.owner.as_deref() == Some(name)).count())
                        .collect();
                    let (max, min) = (counts.iter().max().unwrap(), counts.iter().min().unwrap());
                    assert!(max - min <= 1, "{node_count} nodes, {lease_count} leases: {counts:?}");
                    assert!(state.iter().all(|lease| lease.owner.is_some()), "{state:?}");
                    assert!(*max <= fair_share(lease_count, node_count));
                }
            }
        }
    }

    /// What the store does with a plan, on the in-memory table.
    fn apply(me: &str, plan: &Plan, state: &mut [LeaseState]) {
        for lease in state.iter_mut() {
            let take = plan.claim_free.contains(&lease.key) || plan.take_expired.as_ref() == Some(&lease.key);
            if take {
                lease.owner = Some(me.to_string());
                lease.requested_by = None;
            }
            if plan.request.as_ref() == Some(&lease.key) {
                lease.requested_by = Some(me.to_string());
            }
            if plan.hand_off.contains(&lease.key) {
                lease.owner = None;
            }
        }
    }
}
