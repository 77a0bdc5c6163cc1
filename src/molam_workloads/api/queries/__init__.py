"""SQL of the API, kept out of the routers: each module builds and runs one family of queries."""

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection of its own or one lent by the pool.
Conn = asyncpg.Connection | PoolConnectionProxy
