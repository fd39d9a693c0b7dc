"""The PostgreSQL side: connections, throwaway clusters, a server's context and shape, comparison."""
