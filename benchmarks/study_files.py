"""Names of the method study's result files, shared by the parts that write them and the report that reads them
(the report must not import the training code, nor the training parts matplotlib)."""

TEACHER_FILE = "teacher.json"
RECIPE_FILE = "recipe.json"
SPEEDS_FILE = "speeds.json"
