//! Graph algorithms over adjacency lists (`adjacency[i]`: the consumers of node `i`).

use std::collections::{BTreeSet, HashMap};

/// Whether `to` can be reached from `from` over data edges.
pub(crate) fn reachable(adjacency: &[Vec<usize>], from: usize, to: usize) -> bool {
    let mut seen = vec![false; adjacency.len()];
    let mut stack = vec![from];
    while let Some(n) = stack.pop() {
        for &m in &adjacency[n] {
            if m == to {
                return true;
            }
            if !seen[m] {
                seen[m] = true;
                stack.push(m);
            }
        }
    }
    false
}

/// Kahn's algorithm, taking ready nodes in definition order (stable and deterministic).
pub(crate) fn topological(adjacency: &[Vec<usize>]) -> Vec<usize> {
    let n = adjacency.len();
    let mut indegree = vec![0; n];
    for outs in adjacency {
        for &m in outs {
            indegree[m] += 1;
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(&i) = ready.iter().next() {
        ready.remove(&i);
        order.push(i);
        for &m in &adjacency[i] {
            indegree[m] -= 1;
            if indegree[m] == 0 {
                ready.insert(m);
            }
        }
    }
    order
}

/// One representative cycle per strongly connected component with more than one node, each
/// starting at its lowest index (self-loops are rejected earlier).
pub(crate) fn find_cycles(adjacency: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = adjacency.len();
    let mut component = vec![usize::MAX; n];
    let mut cycles = Vec::new();
    for start in 0..n {
        if component[start] != usize::MAX {
            continue;
        }
        // Nodes reachable from `start` that can reach `start` back form its component.
        let forward = reach_set(adjacency, start);
        let members: Vec<usize> = (0..n)
            .filter(|&m| m == start || (forward[m] && reach_set(adjacency, m)[start]))
            .collect();
        for &m in &members {
            component[m] = start;
        }
        if members.len() > 1 {
            cycles.push(path_back(adjacency, start, &members));
        }
    }
    cycles
}

fn reach_set(adjacency: &[Vec<usize>], from: usize) -> Vec<bool> {
    let mut seen = vec![false; adjacency.len()];
    let mut stack = vec![from];
    while let Some(n) = stack.pop() {
        for &m in &adjacency[n] {
            if !seen[m] {
                seen[m] = true;
                stack.push(m);
            }
        }
    }
    seen
}

/// A shortest path start -> ... -> (back to start) within `members` (BFS).
fn path_back(adjacency: &[Vec<usize>], start: usize, members: &[usize]) -> Vec<usize> {
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for &m in &adjacency[n] {
            if !members.contains(&m) {
                continue;
            }
            if m == start {
                let mut path = vec![n];
                let mut cur = n;
                while cur != start {
                    cur = parent[&cur];
                    path.push(cur);
                }
                path.reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(m) {
                e.insert(n);
                queue.push_back(m);
            }
        }
    }
    vec![start]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_cycle_once_with_its_path() {
        // 0 -> 1 -> 2 -> 1, 3 -> 3 is not here (self loops are rejected earlier).
        let adj = vec![vec![1], vec![2], vec![1]];
        assert_eq!(find_cycles(&adj), vec![vec![1, 2]]);
        assert!(find_cycles(&[vec![1], vec![2], vec![]]).is_empty());
    }

    #[test]
    fn topological_order_is_stable() {
        let adj = vec![vec![2], vec![2], vec![]];
        assert_eq!(topological(&adj), vec![0, 1, 2]);
    }
}
