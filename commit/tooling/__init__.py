"""For operators, tests and benchmarks: throwaway local clusters, queries to every node, tables, traces."""
