"""The one error type for bad input: it names the input and says what is wrong with it."""


class InputError(ValueError):
    """Bad input data, facts or parameters.

    `source` names the input (a file path, a parameter key, a program); the message says the
    problem. Stages catch nothing: the error reaches the user with both.
    """

    def __init__(self, source: object, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")
