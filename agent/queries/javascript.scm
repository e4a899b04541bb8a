(class_declaration name: (identifier) @name) @definition.class
(function_declaration name: (identifier) @name) @definition.function
(method_definition name: (property_identifier) @name) @definition.function
(variable_declarator name: (identifier) @name value: [(arrow_function) (function_expression)]) @definition.function
(call_expression function: [(identifier) @name (member_expression property: (property_identifier) @name)]) @reference.call
(new_expression constructor: (identifier) @name) @reference.call
(import_statement) @import
