//! The shared suite's cases for reads of many agents at once: each answers what the
//! one-agent reads answer.

use super::suite::{assignment, enrolled, now, put};
use super::suite_images::{delivery, image};
use super::{AgentRecord, Assignment, SessionRead, Store};

/// What the one-agent reads say of `id`, as a [`SessionRead`].
fn one_by_one(s: &dyn Store, id: &str) -> SessionRead {
    let Some(labels) = s.agent_labels(id).unwrap() else {
        return SessionRead::default();
    };
    SessionRead {
        labels: Some(labels),
        target_generation: s
            .agent_rollout(id)
            .unwrap()
            .map_or(0, |r| r.target_generation),
        assignments: s.assignments(id).unwrap(),
        drain: s.agent_drain(id).unwrap(),
        deliveries: s.list_deliveries(Some(id)).unwrap(),
    }
}

/// A batch of agents in every state (advanced with two runners, drained, with a delivery,
/// untouched, unknown) reads as each one alone does.
pub(super) fn batch_reads_match_one_agent_reads(s: Box<dyn Store>) {
    enrolled(&*s, 3, &["a1", "a2", "a3"]);
    put(
        &*s,
        &[
            assignment("a1", "r2", 2),
            assignment("a1", "r1", 1),
            assignment("a3", "r1", 3),
        ],
    );
    s.drain_agents(&["a2".to_string()], now(), None).unwrap();
    s.add_push(&image(), &[delivery("a2")]).unwrap();
    let ids: Vec<String> = ["a1", "a2", "a3", "nobody"].map(String::from).to_vec();
    let batch = s.session_reads(&ids).unwrap();
    assert_eq!(batch.len(), 4);
    for id in &ids {
        assert_eq!(batch[id], one_by_one(&*s, id), "{id}");
    }
    let a1 = &batch["a1"];
    assert_eq!(
        (a1.target_generation, a1.assignments.len()),
        (1, 2),
        "a1 advanced with two runners"
    );
    assert!(batch["a2"].drain.is_some() && batch["a2"].deliveries.len() == 1);
    assert_eq!(batch["nobody"], SessionRead::default());
    assert!(s.session_reads(&[]).unwrap().is_empty());

    let got = s.agents_with_assignments(&ids).unwrap();
    let want: Vec<(AgentRecord, Vec<Assignment>)> = ["a1", "a2", "a3"]
        .iter()
        .map(|id| {
            (
                s.get_agent(id).unwrap().unwrap(),
                s.assignments(id).unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want, "in the order asked, unknown agents left out");
}
