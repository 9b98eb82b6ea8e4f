//! Root-cause attribution (regressions through their regressed dependencies down to their roots)
//! and the grouping of root regressions by error.

use super::*;

pub(crate) struct Attribution {
    pub(crate) scc_of: Vec<Ix>,
    pub(crate) scc_roots: Csr,
    /// Crate indices of cycle members.
    pub(crate) cycles: Vec<Ix>,
}

/// Tarjan's strongly connected components over the regressions' dependency links, iteratively.
/// Tarjan emits a component only after every component it reaches, so each component's roots are
/// computed from finished ones: the union of its successors' roots, or its own members when it
/// has no successor.
pub(crate) fn attribute(regressed: &[Ix], edges: &Csr) -> Attribution {
    let r = regressed.len();
    let mut t = Tarjan {
        regressed,
        edges,
        order: vec![NONE; r],
        low: vec![0 as Ix; r],
        on_stack: vec![false; r],
        stack: Vec::new(),
        frames: Vec::new(),
        next: 0,
        out: Attribution {
            scc_of: vec![NONE; r],
            scc_roots: Csr {
                off: vec![0],
                items: Vec::new(),
            },
            cycles: Vec::new(),
        },
        scc_count: 0,
        members: Vec::new(),
        found: Vec::new(),
    };
    for start in 0..r as Ix {
        if t.order[start as usize] == NONE {
            t.discover(start);
            t.search();
        }
    }
    t.out
}

/// The state of [`attribute`]'s depth-first search.
struct Tarjan<'a> {
    regressed: &'a [Ix],
    edges: &'a Csr,
    order: Vec<Ix>,
    low: Vec<Ix>,
    on_stack: Vec<bool>,
    stack: Vec<Ix>,
    /// The search path: each node with the position of its next link to follow.
    frames: Vec<(Ix, usize)>,
    next: Ix,
    out: Attribution,
    scc_count: Ix,
    members: Vec<Ix>,
    found: Vec<Ix>,
}

impl Tarjan<'_> {
    /// Numbers `v` and puts it on the stack and the search path.
    fn discover(&mut self, v: Ix) {
        self.order[v as usize] = self.next;
        self.low[v as usize] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack[v as usize] = true;
        self.frames.push((v, self.edges.off[v as usize]));
    }

    /// Follows links until the search path started by the last [`Tarjan::discover`] is empty.
    fn search(&mut self) {
        while let Some(frame) = self.frames.last_mut() {
            let v = frame.0;
            if frame.1 < self.edges.off[v as usize + 1] {
                let w = self.edges.items[frame.1];
                frame.1 += 1;
                if self.order[w as usize] == NONE {
                    self.discover(w);
                } else if self.on_stack[w as usize] {
                    self.low[v as usize] = self.low[v as usize].min(self.order[w as usize]);
                }
                continue;
            }
            self.frames.pop();
            if let Some(&(u, _)) = self.frames.last() {
                self.low[u as usize] = self.low[u as usize].min(self.low[v as usize]);
            }
            if self.low[v as usize] == self.order[v as usize] {
                self.close_component(v);
            }
        }
    }

    /// `v` is the head of a component: pops it and computes its roots from finished components.
    fn close_component(&mut self, v: Ix) {
        let scc = self.scc_count;
        self.scc_count += 1;
        self.members.clear();
        while let Some(w) = self.stack.pop() {
            self.on_stack[w as usize] = false;
            self.out.scc_of[w as usize] = scc;
            self.members.push(w);
            if w == v {
                break;
            }
        }
        self.found.clear();
        let mut self_link = false;
        for &m in &self.members {
            for &w in self.edges.row(m) {
                let s = self.out.scc_of[w as usize];
                if s == scc {
                    self_link = true;
                } else {
                    self.found.extend_from_slice(self.out.scc_roots.row(s));
                }
            }
        }
        let regressed = self.regressed;
        if self.found.is_empty() {
            self.found
                .extend(self.members.iter().map(|&m| regressed[m as usize]));
        }
        self.found.sort_unstable();
        self.found.dedup();
        let roots = &mut self.out.scc_roots;
        roots.items.extend_from_slice(&self.found);
        roots.off.push(roots.items.len());
        if self_link {
            self.out
                .cycles
                .extend(self.members.iter().map(|&m| regressed[m as usize]));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum KeyRef<'a> {
    Code(&'a str),
    Kind(&'static str),
}

pub(crate) fn group_by_error<'a>(results: &'a [CrateResult], roots: &[Ix]) -> Vec<GroupData> {
    let mut index: HashMap<KeyRef<'a>, usize> = HashMap::new();
    let mut groups: Vec<(KeyRef<'a>, Vec<Ix>)> = Vec::new();
    let mut add = |key: KeyRef<'a>, i: Ix| {
        let g = *index.entry(key).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    };
    for &i in roots {
        match &results[i as usize].end {
            Outcome::BuildFail(BuildFailReason::CompilerError { codes }) if !codes.is_empty() => {
                for (k, code) in codes.iter().enumerate() {
                    if !codes[..k].contains(code) {
                        add(KeyRef::Code(code), i);
                    }
                }
            }
            Outcome::BuildFail(BuildFailReason::CompilerError { .. }) => {
                add(KeyRef::Kind("compiler-error"), i);
            }
            Outcome::BuildFail(reason) => add(KeyRef::Kind(reason.kind()), i),
            other => add(KeyRef::Kind(other.kind()), i),
        }
    }
    let mut groups: Vec<GroupData> = groups
        .into_iter()
        .map(|(key, crates)| GroupData {
            key: match key {
                KeyRef::Code(code) => ErrorGroupKey::Code(code.to_owned()),
                KeyRef::Kind(kind) => ErrorGroupKey::Kind(kind),
            },
            crates,
        })
        .collect();
    groups.sort_by(|a, b| {
        b.crates
            .len()
            .cmp(&a.crates.len())
            .then_with(|| a.key.as_str().cmp(b.key.as_str()))
    });
    groups
}

pub(crate) fn reason_counts<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> Vec<ReasonCount> {
    let mut counts: Vec<ReasonCount> = Vec::new();
    for outcome in outcomes {
        let kind = outcome.reason_kind().unwrap_or_else(|| outcome.kind());
        match counts.iter_mut().find(|c| c.kind == kind) {
            Some(c) => c.crates += 1,
            None => counts.push(ReasonCount { kind, crates: 1 }),
        }
    }
    counts.sort_by(|a, b| b.crates.cmp(&a.crates).then(a.kind.cmp(b.kind)));
    counts
}

/// The regressions ranked by root cause: what [`rank_regressions`] computes for the report.
pub(crate) struct Ranked {
    /// Position of each crate in the regressions, or [`NONE`].
    pos_of: Vec<Ix>,
    /// Regressions through each regression, by position.
    pub(crate) impact: Vec<u32>,
    pub(crate) scc_of: Vec<Ix>,
    pub(crate) scc_roots: Csr,
    /// Crate indices of cycle members, unsorted.
    pub(crate) cycles: Vec<Ix>,
    /// Regressions that explain at least one regression (themselves included), unsorted.
    pub(crate) roots: Vec<Ix>,
    /// The other regressions, unsorted.
    pub(crate) others: Vec<Ix>,
    pub(crate) unresolved: Vec<UnresolvedDependency>,
}

impl Ranked {
    /// Regressions through the regressed crate `i`.
    pub(crate) fn impact_of(&self, i: Ix) -> u32 {
        self.impact[self.pos_of[i as usize] as usize]
    }
}

/// Resolves the `depends-on` links of the regressions, attributes each regression to its roots and
/// counts the regressions through each root.
pub(crate) fn rank_regressions(
    results: &[CrateResult],
    regressed: &[Ix],
    id_index: &HashIndex,
) -> Ranked {
    let mut pos_of = vec![NONE; results.len()];
    for (p, &i) in (0..).zip(regressed) {
        pos_of[i as usize] = p;
    }
    let (edges, unresolved) = resolve_dependencies(results, regressed, &pos_of, id_index);
    let Attribution {
        scc_of,
        scc_roots,
        cycles,
    } = attribute(regressed, &edges);
    drop(edges);
    let mut impact = vec![0u32; regressed.len()];
    for &scc in &scc_of {
        for &root in scc_roots.row(scc) {
            impact[pos_of[root as usize] as usize] += 1;
        }
    }
    let (roots, others): (Vec<Ix>, Vec<Ix>) = regressed
        .iter()
        .partition(|&&i| impact[pos_of[i as usize] as usize] > 0);
    Ranked {
        pos_of,
        impact,
        scc_of,
        scc_roots,
        cycles,
        roots,
        others,
        unresolved,
    }
}

/// The regressions as the report lists them.
pub(crate) struct Listed {
    /// Root regressions, by regressions through them (then by id).
    pub(crate) roots: Vec<Ix>,
    /// The roots, then the other regressions by id.
    pub(crate) regressions: Vec<Ix>,
    /// Regressions and diagnostics changes of quiet crates, by id: named apart.
    pub(crate) quiet: Vec<Ix>,
    /// Diagnostics changes of crates that are not quiet, by id.
    pub(crate) diagnostics: Vec<Ix>,
}

/// Orders the ranked regressions for the report and takes the quiet crates out of the lists.
pub(crate) fn list_regressions(
    results: &[CrateResult],
    regressed: &[Ix],
    mut diagnostics: Vec<Ix>,
    ranked: &mut Ranked,
    is_quiet: impl Fn(&CrateId) -> bool,
) -> Listed {
    let by_id = |a: &Ix, b: &Ix| results[*a as usize].krate.cmp(&results[*b as usize].krate);
    let mut roots = std::mem::take(&mut ranked.roots);
    let mut others = std::mem::take(&mut ranked.others);
    roots.sort_by(|a, b| {
        let (ia, ib) = (ranked.impact_of(*a), ranked.impact_of(*b));
        ib.cmp(&ia).then_with(|| by_id(a, b))
    });
    others.sort_by(by_id);
    let mut quiet: Vec<Ix> = regressed
        .iter()
        .chain(&diagnostics)
        .copied()
        .filter(|&i| is_quiet(&results[i as usize].krate))
        .collect();
    diagnostics.retain(|&i| !is_quiet(&results[i as usize].krate));
    diagnostics.sort_by(by_id);
    if !quiet.is_empty() {
        quiet.sort_by(by_id);
        let q: HashSet<Ix> = quiet.iter().copied().collect();
        roots.retain(|i| !q.contains(i));
        others.retain(|i| !q.contains(i));
    }
    let mut regressions = Vec::with_capacity(regressed.len());
    regressions.extend_from_slice(&roots);
    regressions.extend_from_slice(&others);
    Listed {
        roots,
        regressions,
        quiet,
        diagnostics,
    }
}

/// The reasons of the spurious results: the end outcomes of `spurious-regressed` crates, the start
/// outcomes of `spurious-fixed` ones, and both outcomes of `spurious` ones.
pub(crate) fn spurious_reasons(
    results: &[CrateResult],
    [regressed, fixed, both]: [&[Ix]; 3],
) -> (Vec<ReasonCount>, Vec<ReasonCount>, Vec<ReasonCount>) {
    (
        reason_counts(regressed.iter().map(|&i| &results[i as usize].end)),
        reason_counts(fixed.iter().map(|&i| &results[i as usize].start)),
        reason_counts(both.iter().flat_map(|&i| {
            let r = &results[i as usize];
            [&r.start, &r.end]
        })),
    )
}
