"""The submission CSV: write, read and validate it (a fast row codec), hard and soft votes on
label arrays, and the local leaderboard. No torch.
"""

from segkit.submission.codec import (
    HEADER,
    NUM_CLASSES,
    READ_BUFFER,
    SUBMISSION_SIZE,
    RowDecoder,
    RowEncoder,
    check_parameters,
)
from segkit.submission.files import (
    MAX_PROBLEMS,
    SubmissionWriter,
    submission_writer,
    validate_submission,
    write_submission,
)
from segkit.submission.leaderboard import (
    leaderboard_file,
    leaderboard_table,
    read_scores,
    record_score,
    sha256,
    write_local_score,
)
from segkit.submission.reader import (
    header_problem,
    iter_submission,
    max_line_length,
    read_lines,
    read_submission,
    split_row,
    unterminated,
)
from segkit.submission.vote import (
    argmax_classes,
    check_weights,
    disagreement,
    hard_vote,
    model_ranking,
    refuse_overwriting_inputs,
    take_where,
    weighted_vote,
)

__all__ = [
    "HEADER",
    "SUBMISSION_SIZE",
    "NUM_CLASSES",
    "READ_BUFFER",
    "check_parameters",
    "RowEncoder",
    "RowDecoder",
    "MAX_PROBLEMS",
    "SubmissionWriter",
    "submission_writer",
    "write_submission",
    "validate_submission",
    "leaderboard_file",
    "sha256",
    "record_score",
    "write_local_score",
    "read_scores",
    "leaderboard_table",
    "header_problem",
    "max_line_length",
    "read_lines",
    "unterminated",
    "split_row",
    "iter_submission",
    "read_submission",
    "check_weights",
    "model_ranking",
    "weighted_vote",
    "take_where",
    "disagreement",
    "hard_vote",
    "refuse_overwriting_inputs",
    "argmax_classes",
]
