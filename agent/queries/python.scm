; Definitions, references and imports for Python. Captures: @name plus one of
; @definition.class / @definition.function / @reference.call / @reference.name / @import.
(class_definition name: (identifier) @name) @definition.class
(function_definition name: (identifier) @name) @definition.function
(call function: [(identifier) @name (attribute attribute: (identifier) @name)]) @reference.call
(import_statement) @import
(import_from_statement) @import
