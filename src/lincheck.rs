//! A linearizability checker for histories of operations on one key, after
//! Wing and Gong with Lowe's memoisation (as Knossos' `wgl` and porcupine
//! do): search for an order of the operations that respects real time (an
//! operation that returned before another was called comes first) and that
//! a sequential model accepts, remembering (linearized set, model state)
//! pairs already explored so each is tried once.
//!
//! An operation whose outcome is unknown (a timeout, a 504 "may or may not
//! have been applied") has no return time: it may take effect at any point
//! after its call, or never.
//!
//! [`Object`] is the model of one Kubernetes object as clients see it:
//! create, update with a resourceVersion precondition, read. Histories are
//! checked per key; keys are independent.

pub mod watch;

use std::collections::HashSet;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash;
    type Input;
    type Output: PartialEq;

    fn init(&self) -> Self::State;

    /// Apply `input` to `state`. `output` is what the client saw, or `None`
    /// when it never learned the outcome. Returns the next state, or `None`
    /// when the model could not have answered `output` in `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation<I, O> {
    /// When the client sent it (any clock common to all clients).
    pub call: u64,
    /// When the answer arrived, with the answer; `None` when it never did.
    pub ret: Option<(u64, O)>,
    pub input: I,
}

/// Whether `history` is linearizable with respect to `model`.
pub fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> bool {
    check_within(model, history, u64::MAX) == Verdict::Linearizable
}

/// What [`check_within`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The search took more than the steps allowed. Proving a long
    /// history wrong means trying every order, which can take very long.
    Undecided,
}

/// [`check`] with at most `max_steps` search steps.
pub fn check_within<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    max_steps: u64,
) -> Verdict {
    let n = history.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // the events in time order; at equal times calls come first, so
    // operations that touch in time count as concurrent
    #[derive(Clone, Copy)]
    enum Ev {
        Call(usize),
        Ret(usize),
    }
    let mut events: Vec<(u64, u8, Ev)> = Vec::with_capacity(2 * n);
    for (i, op) in history.iter().enumerate() {
        events.push((op.call, 0, Ev::Call(i)));
        let at = op.ret.as_ref().map(|(t, _)| *t).unwrap_or(u64::MAX);
        events.push((at, 1, Ev::Ret(i)));
    }
    events.sort_by_key(|(t, kind, _)| (*t, *kind));

    // a doubly linked list over the events (index n*2 is the head sentinel)
    let head = events.len();
    let mut next = vec![usize::MAX; events.len() + 1];
    let mut prev = vec![usize::MAX; events.len() + 1];
    let mut call_at = vec![0; n];
    let mut ret_at = vec![0; n];
    let mut last = head;
    for (pos, (_, _, ev)) in events.iter().enumerate() {
        match ev {
            Ev::Call(i) => call_at[*i] = pos,
            Ev::Ret(i) => ret_at[*i] = pos,
        }
        next[last] = pos;
        prev[pos] = last;
        last = pos;
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let (p, nx) = (prev[e], next[e]);
        next[p] = nx;
        if nx != usize::MAX {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let (p, nx) = (prev[e], next[e]);
        next[p] = e;
        if nx != usize::MAX {
            prev[nx] = e;
        }
    };

    let mut linearized = vec![0u64; n.div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut entry = next[head];
    let mut steps = 0u64;
    loop {
        if next[head] == usize::MAX {
            return Verdict::Linearizable;
        }
        steps += 1;
        if steps > max_steps {
            return Verdict::Undecided;
        }
        if entry == usize::MAX {
            // every remaining call was tried here: undo the last choice
            let Some((i, before)) = stack.pop() else {
                return Verdict::NotLinearizable;
            };
            state = before;
            linearized[i / 64] &= !(1 << (i % 64));
            relink(&mut next, &mut prev, ret_at[i]);
            relink(&mut next, &mut prev, call_at[i]);
            entry = next[call_at[i]];
            continue;
        }
        match events[entry].2 {
            Ev::Call(i) => {
                let op = &history[i];
                let applied = model.step(&state, &op.input, op.ret.as_ref().map(|(_, o)| o));
                if let Some(after) = applied {
                    let mut bits = linearized.clone();
                    bits[i / 64] |= 1 << (i % 64);
                    if seen.insert((bits.clone(), after.clone())) {
                        stack.push((i, std::mem::replace(&mut state, after)));
                        linearized = bits;
                        unlink(&mut next, &mut prev, call_at[i]);
                        unlink(&mut next, &mut prev, ret_at[i]);
                        entry = next[head];
                        continue;
                    }
                }
                entry = next[entry];
            }
            // an operation returned before any order placed it: back up
            Ev::Ret(_) => entry = usize::MAX,
        }
    }
}

/// One Kubernetes object as clients see it. Every write carries a value
/// never written before, so a value names the write that made it and a
/// resourceVersion precondition becomes "the value I read".
#[derive(Debug, Clone, Copy, Default)]
pub struct Object;

/// What a client asked of the object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectInput {
    /// POST: create with this value.
    Create(u64),
    /// PUT with the resourceVersion of the write that wrote `expect`.
    Update { expect: u64, value: u64 },
    /// GET.
    Read,
}

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectOutput {
    /// 201/200 for a write.
    Ok,
    /// 409 AlreadyExists for a create.
    AlreadyExists,
    /// 409 Conflict for an update whose precondition failed.
    Conflict,
    /// 404.
    NotFound,
    /// 200 for a read, with the value.
    Value(u64),
}

impl Model for Object {
    type State = Option<u64>;
    type Input = ObjectInput;
    type Output = ObjectOutput;

    fn init(&self) -> Option<u64> {
        None
    }

    fn step(
        &self,
        state: &Option<u64>,
        input: &ObjectInput,
        output: Option<&ObjectOutput>,
    ) -> Option<Option<u64>> {
        let (answer, next) = match (input, state) {
            (ObjectInput::Create(v), None) => (ObjectOutput::Ok, Some(*v)),
            (ObjectInput::Create(_), Some(_)) => (ObjectOutput::AlreadyExists, *state),
            (ObjectInput::Update { .. }, None) => (ObjectOutput::NotFound, None),
            (ObjectInput::Update { expect, value }, Some(cur)) if cur == expect => {
                (ObjectOutput::Ok, Some(*value))
            }
            (ObjectInput::Update { .. }, Some(_)) => (ObjectOutput::Conflict, *state),
            (ObjectInput::Read, None) => (ObjectOutput::NotFound, None),
            (ObjectInput::Read, Some(v)) => (ObjectOutput::Value(*v), *state),
        };
        match output {
            Some(seen) if *seen != answer => None,
            _ => Some(next),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ObjectInput::*;
    use super::ObjectOutput as Out;
    use super::*;

    fn op(call: u64, ret: Option<(u64, Out)>, input: ObjectInput) -> Operation<ObjectInput, Out> {
        Operation { call, ret, input }
    }

    #[test]
    fn sequential_histories_follow_the_model() {
        let h = vec![
            op(0, Some((1, Out::Ok)), Create(1)),
            op(2, Some((3, Out::Value(1))), Read),
            op(
                4,
                Some((5, Out::Ok)),
                Update {
                    expect: 1,
                    value: 2,
                },
            ),
            op(
                6,
                Some((7, Out::Conflict)),
                Update {
                    expect: 1,
                    value: 3,
                },
            ),
            op(8, Some((9, Out::Value(2))), Read),
        ];
        assert!(check(&Object, &h));
        let mut stale = h.clone();
        stale[4] = op(8, Some((9, Out::Value(1))), Read);
        assert!(!check(&Object, &stale), "a stale read after a write");
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // a read overlapping the create sees either nothing or the value
        for seen in [Out::NotFound, Out::Value(1)] {
            let h = vec![
                op(0, Some((10, Out::Ok)), Create(1)),
                op(1, Some((5, seen.clone())), Read),
            ];
            assert!(check(&Object, &h), "{seen:?}");
        }
        // but two reads in sequence cannot go back in time
        let h = vec![
            op(0, Some((10, Out::Ok)), Create(1)),
            op(1, Some((3, Out::Value(1))), Read),
            op(4, Some((6, Out::NotFound)), Read),
        ];
        assert!(!check(&Object, &h));
    }

    #[test]
    fn an_unknown_outcome_may_have_happened_or_not() {
        // a timed-out create, later seen
        let h = vec![
            op(0, None, Create(1)),
            op(5, Some((6, Out::Value(1))), Read),
        ];
        assert!(check(&Object, &h));
        // or never seen
        let h = vec![
            op(0, None, Create(1)),
            op(5, Some((6, Out::NotFound)), Read),
        ];
        assert!(check(&Object, &h));
        // but not seen before it was sent
        let h = vec![
            op(5, None, Create(1)),
            op(0, Some((2, Out::Value(1))), Read),
        ];
        assert!(!check(&Object, &h));
        // and an acknowledged write cannot be lost
        let h = vec![
            op(0, Some((1, Out::Ok)), Create(1)),
            op(2, Some((3, Out::NotFound)), Read),
        ];
        assert!(!check(&Object, &h));
    }

    #[test]
    fn two_winners_of_one_precondition_are_an_anomaly() {
        let h = vec![
            op(0, Some((1, Out::Ok)), Create(1)),
            op(
                2,
                Some((10, Out::Ok)),
                Update {
                    expect: 1,
                    value: 2,
                },
            ),
            op(
                3,
                Some((11, Out::Ok)),
                Update {
                    expect: 1,
                    value: 3,
                },
            ),
        ];
        assert!(!check(&Object, &h));
    }

    #[test]
    fn a_search_can_be_bounded() {
        let h = vec![
            op(0, Some((1, Out::Ok)), Create(1)),
            op(2, Some((3, Out::NotFound)), Read),
        ];
        assert_eq!(check_within(&Object, &h, 1_000), Verdict::NotLinearizable);
        assert_eq!(check_within(&Object, &h, 1), Verdict::Undecided);
    }

    #[test]
    fn long_histories_are_checked_quickly() {
        // 2,000 sequential operations on one key, each overlapping the next
        let mut h = Vec::new();
        let mut t = 0;
        h.push(op(t, Some((t + 1, Out::Ok)), Create(0)));
        for v in 1..2000u64 {
            t += 2;
            h.push(op(
                t,
                Some((t + 3, Out::Ok)),
                Update {
                    expect: v - 1,
                    value: v,
                },
            ));
        }
        assert!(check(&Object, &h));
    }

    /// Differential test: random histories from a small concurrent system
    /// (some of them with a corrupted answer), judged by this checker and
    /// by stateright's `LinearizabilityTester`; the verdicts must agree.
    #[test]
    fn agrees_with_stateright_on_random_histories() {
        use rand::{Rng, SeedableRng};
        use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

        #[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
        struct Spec(Option<u64>);
        impl SequentialSpec for Spec {
            type Op = ObjectInput;
            type Ret = Out;
            fn invoke(&mut self, op: &ObjectInput) -> Out {
                let (answer, next) = match (op, self.0) {
                    (Create(v), None) => (Out::Ok, Some(*v)),
                    (Create(_), s @ Some(_)) => (Out::AlreadyExists, s),
                    (Update { .. }, None) => (Out::NotFound, None),
                    (Update { expect, value }, Some(c)) if c == *expect => (Out::Ok, Some(*value)),
                    (Update { .. }, s @ Some(_)) => (Out::Conflict, s),
                    (Read, None) => (Out::NotFound, None),
                    (Read, Some(v)) => (Out::Value(v), Some(v)),
                };
                self.0 = next;
                answer
            }
        }

        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let (mut agreed, mut anomalies) = (0, 0);
        for _ in 0..3000 {
            let threads = rng.random_range(1..=3usize);
            let steps = rng.random_range(1..=7usize);
            let mut truth: Option<u64> = None;
            let mut next_value = 1u64;
            // per thread: the op in flight, its call time, its answer
            type Pending = Option<(ObjectInput, u64, Option<Out>)>;
            let mut pending: Vec<Pending> = vec![None; threads];
            let mut ours = Vec::new();
            let mut theirs = LinearizabilityTester::new(Spec(None));
            let mut t = 0u64;
            for _ in 0..steps * threads * 2 {
                t += 1;
                let th = rng.random_range(0..threads);
                match pending[th].take() {
                    None => {
                        let input = match rng.random_range(0..3) {
                            0 => Create(next_value),
                            1 => Update {
                                expect: rng.random_range(0..next_value),
                                value: next_value,
                            },
                            _ => Read,
                        };
                        next_value += 1;
                        theirs.on_invoke(th, input.clone()).unwrap();
                        pending[th] = Some((input, t, None));
                    }
                    Some((input, call, None)) => {
                        // the system takes effect now (linearization point)
                        let mut s = Spec(truth);
                        let mut answer = s.invoke(&input);
                        truth = s.0;
                        if rng.random_range(0..8) == 0 {
                            // a corrupted answer: sometimes still valid
                            answer = match rng.random_range(0..3) {
                                0 => Out::Ok,
                                1 => Out::NotFound,
                                _ => Out::Value(rng.random_range(1..next_value)),
                            };
                        }
                        pending[th] = Some((input, call, Some(answer)));
                    }
                    Some((input, call, Some(answer))) => {
                        theirs.on_return(th, answer.clone()).unwrap();
                        ours.push(op(call, Some((t, answer)), input));
                    }
                }
            }
            // what is still in flight never returns: unknown outcome
            for (input, call, _) in pending.into_iter().flatten() {
                ours.push(op(call, None, input));
            }
            let verdict = check(&Object, &ours);
            assert_eq!(
                verdict,
                theirs.is_consistent(),
                "the checkers disagree on {ours:?}"
            );
            agreed += 1;
            anomalies += usize::from(!verdict);
        }
        assert_eq!(agreed, 3000);
        // both kinds of verdict were exercised
        assert!(anomalies > 100 && anomalies < 2900, "{anomalies} anomalies");
    }
}
