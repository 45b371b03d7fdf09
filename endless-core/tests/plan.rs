//! Property tests of the fd renumbering plan: every plan is run on a simulated fd table that
//! behaves like the kernel's, and the table is checked afterwards (and after a simulated
//! `exec`).

use std::collections::{BTreeMap, BTreeSet};

use endless_core::Fd;
use endless_core::plan::{Plan, Step, plan};
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;

/// An open file description; every fd of the initial table gets its own.
type FileId = u32;

/// One fd table entry: which file, and whether `FD_CLOEXEC` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Open {
    file: FileId,
    cloexec: bool,
}

type Table = BTreeMap<Fd, Open>;

/// A generated child: the sources, the first target, and unrelated open fds.
#[derive(Debug, Clone)]
struct Case {
    first: Fd,
    sources: Vec<Fd>,
    /// Open fds that are no source, close-on-exec (like a runtime's own fds).
    others: BTreeSet<Fd>,
}

impl Case {
    fn end(&self) -> Fd {
        self.first + Fd::try_from(self.sources.len()).unwrap()
    }

    fn in_range(&self, fd: Fd) -> bool {
        (self.first..self.end()).contains(&fd)
    }

    /// The child's table when it is created: stdio without `FD_CLOEXEC`, every other fd
    /// (the sources and the unrelated ones) with it.
    fn table(&self) -> Table {
        let fds: BTreeSet<Fd> = (0..3)
            .chain(self.sources.iter().copied())
            .chain(self.others.iter().copied())
            .collect();
        fds.into_iter()
            .map(|fd| {
                let open = Open {
                    file: FileId::try_from(fd).unwrap(),
                    cloexec: fd > 2,
                };
                (fd, open)
            })
            .collect()
    }
}

/// What running a plan did, besides the final table.
#[derive(Debug)]
struct Run {
    table: Table,
    /// The fds copied to the spare, in order.
    spared: Vec<Fd>,
}

/// Runs the steps on `table` the way the kernel runs `dup2` and `close` (a `dup2` between
/// two numbers clears `FD_CLOEXEC` on the new one; `dup2(fd, fd)` changes nothing), failing
/// on anything the kernel would refuse (`EBADF`) and on anything the plan promises never to
/// do.
fn run(plan: &Plan, mut table: Table) -> Result<Run, String> {
    let targets = plan.targets();
    let spare = plan.spare();
    let mut spared = Vec::new();
    for (n, &step) in plan.steps().iter().enumerate() {
        let fail = |what: String| Err(format!("step {n} {step:?}: {what}"));
        match step {
            Step::Dup2 { from, to } => {
                if from == to {
                    return fail("dup2 onto itself".into());
                }
                if !targets.contains(&to) && Some(to) != spare {
                    return fail(format!(
                        "writes fd {to}, outside {targets:?} and not the spare"
                    ));
                }
                let Some(&Open { file, .. }) = table.get(&from) else {
                    return fail(format!("EBADF: fd {from} is not open"));
                };
                table.insert(
                    to,
                    Open {
                        file,
                        cloexec: false,
                    },
                );
                if Some(to) == spare {
                    spared.push(from);
                }
            }
            Step::Close { fd } => {
                if Some(fd) != spare {
                    return fail(format!("closes fd {fd}, which is not the spare"));
                }
                if n + 1 != plan.steps().len() {
                    return fail("the spare is closed before the last step".into());
                }
                if table.remove(&fd).is_none() {
                    return fail(format!("EBADF: fd {fd} is not open"));
                }
            }
            _ => return fail("unknown step".into()),
        }
    }
    if let Some(spare) = spare
        && table.contains_key(&spare)
    {
        return Err(format!("the spare, fd {spare}, is left open"));
    }
    Ok(Run { table, spared })
}

/// `exec`: every fd with `FD_CLOEXEC` is closed.
fn exec(table: &Table) -> Table {
    table
        .iter()
        .filter(|(_, open)| !open.cloexec)
        .map(|(&fd, &open)| (fd, open))
        .collect()
}

/// The number of cycles of length 2 or more among the in-range sources (index `i` reads
/// the target of index `sources[i] - first`), computed without the planner: the fewest
/// temporaries any plan made of `dup2` moves needs.
fn cycles(case: &Case) -> usize {
    let next = |i: usize| {
        let fd = case.sources[i];
        case.in_range(fd)
            .then(|| usize::try_from(fd - case.first).unwrap())
    };
    // 0: not seen, 1: on the current walk, 2: done.
    let mut state = vec![0u8; case.sources.len()];
    let mut count = 0;
    for start in 0..case.sources.len() {
        let mut walk = Vec::new();
        let mut i = Some(start);
        while let Some(j) = i.filter(|&j| state[j] == 0) {
            state[j] = 1;
            walk.push(j);
            i = next(j);
        }
        if let Some(j) = i.filter(|&j| state[j] == 1) {
            let len = walk.len() - walk.iter().position(|&w| w == j).unwrap();
            if len >= 2 {
                count += 1;
            }
        }
        for j in walk {
            state[j] = 2;
        }
    }
    count
}

fn case() -> impl Strategy<Value = Case> {
    (0..10 as Fd, 0..14usize).prop_flat_map(|(first, n)| {
        let end = first + Fd::try_from(n).unwrap();
        // Sources: many inside the range (so cycles and chains are common), any fd 0..40,
        // duplicates allowed; or an exact permutation of the range.
        let source = prop_oneof![3 => first..end.max(first + 1), 2 => 0..40 as Fd];
        let sources = prop_oneof![
            3 => vec(source, n),
            1 => Just((first..end).collect::<Vec<_>>()).prop_shuffle(),
        ];
        // Unrelated open fds anywhere, including in the range and just above it (where a
        // careless temporary would land).
        let others = btree_set(prop_oneof![0..50 as Fd, end..end + 4], 0..10);
        (sources, others).prop_map(move |(sources, others)| Case {
            first,
            sources,
            others,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Running the plan puts every source at its target, inheritable, and touches nothing
    /// else but the spare, which it closes.
    #[test]
    fn the_plan_renumbers_and_touches_nothing_else(case in case()) {
        let plan = plan(&case.sources, case.first).unwrap();
        prop_assert_eq!(plan.targets(), case.first..case.end());
        if let Some(spare) = plan.spare() {
            prop_assert!(spare >= case.end(), "spare {} inside the range", spare);
            prop_assert!(!case.sources.contains(&spare), "spare {} is a source", spare);
        }
        let before = case.table();
        let after = match run(&plan, before.clone()) {
            Ok(run) => run.table,
            Err(e) => return Err(TestCaseError::fail(format!("{e}\nsteps: {:#?}", plan.steps()))),
        };

        for (i, &source) in case.sources.iter().enumerate() {
            let target = case.first + Fd::try_from(i).unwrap();
            let expected = Open { file: before[&source].file, cloexec: false };
            prop_assert_eq!(
                after.get(&target), Some(&expected),
                "fd {} should hold source #{} (fd {}); steps: {:#?}",
                target, i, source, plan.steps()
            );
        }
        let outside = |table: &Table| -> Table {
            table
                .iter()
                .filter(|(fd, _)| !case.in_range(**fd) && Some(**fd) != plan.spare())
                .map(|(&fd, &o)| (fd, o))
                .collect()
        };
        prop_assert_eq!(outside(&after), outside(&before), "fds outside the range changed; steps: {:#?}", plan.steps());

        // After exec the child has stdio (where not replaced) and exactly the targets.
        let mut expected = outside(&exec(&before));
        for (i, &source) in case.sources.iter().enumerate() {
            let target = case.first + Fd::try_from(i).unwrap();
            expected.insert(target, Open { file: before[&source].file, cloexec: false });
        }
        prop_assert_eq!(exec(&after), expected, "steps: {:#?}", plan.steps());
    }

    /// Few steps: one move per source, two for one in place, one copy per cycle, and one
    /// close of the spare when it was used.
    #[test]
    fn the_plan_is_small(case in case()) {
        let plan = plan(&case.sources, case.first).unwrap();
        let n = case.sources.len();
        let steps = plan.steps();
        let fixed = case
            .sources
            .iter()
            .enumerate()
            .filter(|&(i, &fd)| fd == case.first + Fd::try_from(i).unwrap())
            .count();
        let cycles = cycles(&case);
        prop_assert_eq!(plan.spare().is_some(), fixed + cycles > 0, "steps: {:#?}", steps);
        let close = usize::from(plan.spare().is_some());
        prop_assert_eq!(steps.len(), n + fixed + cycles + close, "steps: {:#?}", steps);
        prop_assert!(steps.len() <= 2 * n + 1, "{} steps for {} sources: {:#?}", steps.len(), n, steps);

        let run = run(&plan, case.table()).map_err(TestCaseError::fail)?;
        prop_assert_eq!(run.spared.len(), fixed + cycles, "steps: {:#?}", steps);
        // Only a source in place or an in-range source that gets overwritten goes there.
        let overwritten: BTreeSet<Fd> = case
            .sources
            .iter()
            .copied()
            .filter(|&fd| case.in_range(fd))
            .collect();
        let spared: BTreeSet<Fd> = run.spared.iter().copied().collect();
        prop_assert_eq!(spared.len(), run.spared.len(), "an fd was spared twice");
        prop_assert!(spared.is_subset(&overwritten), "spared {:?}, in-range sources {:?}", spared, overwritten);
    }

    /// Bad input is refused, never planned.
    #[test]
    fn negative_fds_are_refused(sources in vec(-5..40 as Fd, 0..8), first in -3..10 as Fd) {
        let valid = first >= 0 && sources.iter().all(|&fd| fd >= 0);
        prop_assert_eq!(plan(&sources, first).is_ok(), valid);
    }
}

/// The reference cycle count used above.
#[test]
fn cycles_are_counted() {
    let count = |first, sources: &[Fd]| {
        cycles(&Case {
            first,
            sources: sources.to_vec(),
            others: BTreeSet::new(),
        })
    };
    assert_eq!(count(3, &[]), 0);
    assert_eq!(count(3, &[3, 4, 5]), 0);
    assert_eq!(count(3, &[4, 3]), 1);
    assert_eq!(count(3, &[4, 5, 3]), 1);
    assert_eq!(count(3, &[7, 6, 5, 4, 3]), 2);
    assert_eq!(count(3, &[4, 3, 3, 9]), 1);
    assert_eq!(count(0, &[1, 2, 3]), 0);
}
