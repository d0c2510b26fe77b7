"""TensorDict keys shared by envs, collectors and losses (DESIGN.md, "Conventions")."""

OBSERVATION = ("agents", "observation")
ACTION = ("agents", "action")
ACTION_MASK = ("agents", "action_mask")
LOG_PROB = ("agents", "log_prob")
ADVANTAGE = ("agents", "advantage")
VALUE_TARGET = ("agents", "value_target")
VALUE = ("agents", "state_value")  # the old critic's V, [*batch, N], written with the advantages
STATE = "state"
REWARD = "reward"
EPISODE_RETURN = "episode_return"
RNN_STATE = "agents_rnn_state"  # top level [E, N, H]: a nested spec under "agents" breaks TorchRL's collector buffers
CRITIC_RNN_STATE = "critic_rnn_state"  # top level [E, G, H]: a recurrent critic's state (G = 1 for V(s), N for V(o_i))
IS_INIT = "is_init"
INSTRUCTION = "instruction"  # [*batch] int64: the central conductor's M_t (ALGORITHMS.md section 3)
AGENT_INSTRUCTION = ("agents", "instruction")  # [*batch, N] int64: the instruction each actor reads (M_t broadcast, or local)
CONDUCTOR_ADVANTAGE = "conductor_advantage"  # [*batch]: A^M_t, normalised apart from the agents' A^a_t
CONDUCTOR_PROBS = "conductor_probs"  # [*batch, K]: the behaviour conductor's full w_old(.|s_t)
CONDUCTOR_LOG_PROB = "conductor_log_prob"  # [*batch]: log w_old(M_t|s_t)
